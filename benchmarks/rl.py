"""llmctl rl learns: GRPO on two-number addition, PPO against the HH-RLHF reward model.

    .venv/bin/python benchmarks/rl.py grpo [--sft-steps 250] [--rl-steps 40] [--threads 2] [--sft WORK/sft]
    .venv/bin/python benchmarks/rl.py ppo --sft RUN/sft --reward-model RUN/reward [--steps 40]
    .venv/bin/python benchmarks/rl.py gen [--batch 16] [--new-tokens 64] [--checkpoint CKPT]

grpo: generates "What is A plus B?" -> "#### A+B" problems (A, B < 20; 80 of the 400 held out by a
seeded shuffle, as a `split` column), trains a BPE tokenizer and a random 2-layer model, SFTs it
briefly (llmctl sft: it learns the format and some sums), then runs llmctl rl --algo grpo with the
exact_match reward (eval's extraction). Prints the held-out greedy accuracy (rl's val_reward)
before RL and at every evaluation, the rollout reward curve, and the wall time of each phase.
Floor: +15 points of held-out accuracy within 10 minutes on 2 cores.

ppo: llmctl rl --algo ppo from an SFT run against a reward model (e.g. the toy pipeline's
out/toy/sft and out/toy/reward) on HH-RLHF prompts (the prefs' prompts); prints the mean
reward-model score of greedy answers to held-out prompts (val_reward) before and during PPO,
and the KL to the SFT model per completion (objective/kl) against --target-kl.

gen: generation tokens/s of the shared engine (llmctl.generate.generate_batch: left-padded batch,
KV cache) against transformers `generate` on the same model exported with `llmctl export`, the same
left-padded prompts, greedy, exactly --new-tokens each. Floor: llmctl >= transformers.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "examples" / "prefs" / "hh_rlhf_harmless_base.jsonl"


def addition(n: int = 20, held_out: int = 80, seed: int = 0) -> list[dict]:
    rows = [{"prompt": f"What is {a} plus {b}?", "response": f"#### {a + b}", "answer": f"#### {a + b}"}
            for a in range(n) for b in range(n)]
    random.Random(seed).shuffle(rows)
    for i, r in enumerate(rows):
        r["split"] = "val" if i < held_out else "train"
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def curve(run: Path, key: str) -> list[tuple[int, float]]:
    out = []
    for ln in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(ln)
        if key in r:
            out.append((r["step"], r[key]))
    return out


def grpo(args: argparse.Namespace) -> None:
    import torch

    from llmctl.checkpoint import save_checkpoint
    from llmctl.model import ModelConfig, Transformer
    from llmctl.tokenizer import Tokenizer
    from llmctl.train.loop import TrainConfig
    from llmctl.train.rl import RLConfig, run_rl
    from llmctl.train.sft import SFTConfig, run_sft

    torch.set_num_threads(args.threads)
    tmp = Path(args.work or tempfile.mkdtemp(prefix="rl-bench-"))
    rows = addition()
    data = write_jsonl(tmp / "addition.jsonl", rows)
    tok = Tokenizer.train([f"What is {a} plus {b}? #### {a + b}" for a in range(20) for b in range(20)] * 3,
                          vocab_size=380)
    tok.save(tmp / "tok")
    mc = ModelConfig(vocab_size=tok.vocab_size, n_layer=args.layers, n_head=4, d_model=args.d_model, max_seq_len=64)
    torch.manual_seed(0)
    save_checkpoint(tmp / "init", Transformer(mc), mc, tok.path)
    t0 = time.time()
    sft_dir = Path(args.sft) if args.sft else tmp / "sft"
    sft_cfg = SFTConfig(max_len=64, train=TrainConfig(steps=args.sft_steps, batch_size=16, micro_batch=16, lr=3e-3,
                                                      warmup_steps=20, eval_every=args.sft_steps,
                                                      ckpt_every=args.sft_steps, weight_decay=0.0))
    if not args.sft:
        run_sft(data, tmp / "init", sft_dir, sft_cfg)
    t_sft = time.time() - t0
    cfg = RLConfig(algo="grpo", reward=["exact_match"], num_generations=8, rollout_prompts=8, max_new_tokens=8,
                   temperature=1.0, beta=args.beta, val_limit=80,
                   train=TrainConfig(steps=args.rl_steps, batch_size=64, micro_batch=32, lr=args.lr, warmup_steps=0,
                                     schedule="constant", eval_every=args.eval_every, ckpt_every=args.rl_steps,
                                     weight_decay=0.0))
    t1 = time.time()
    s = run_rl(data, sft_dir, tmp / "rl", cfg, overwrite=True)
    t_rl = time.time() - t1
    start = s["data"]["val_reward_start"]
    val = curve(tmp / "rl", "val_reward")
    print("\n== GRPO on two-number addition (held-out accuracy = greedy exact match on 80 problems)")
    print(f"SFT {args.sft_steps} steps: {t_sft:.0f} s; GRPO {args.rl_steps} steps: {t_rl:.0f} s; total {t_sft + t_rl:.0f} s")
    print(f"held-out accuracy: after SFT {100 * start:.1f}%  " +
          "  ".join(f"step {st}: {100 * v:.1f}%" for st, v in val))
    print("rollout reward (mean exact match of sampled completions): " +
          " ".join(f"{v:.2f}" for _, v in curve(tmp / "rl", "reward")))
    gain = 100 * (val[-1][1] - start)
    print(f"gain {gain:+.1f} points (floor +15) -> {'PASS' if gain >= 15 else 'FAIL'}; work dir {tmp}")


def ppo(args: argparse.Namespace) -> None:
    import torch

    from llmctl.train.loop import TrainConfig
    from llmctl.train.rl import RLConfig, run_rl

    torch.set_num_threads(args.threads)
    tmp = Path(args.work or tempfile.mkdtemp(prefix="rl-bench-ppo-"))
    from llmctl.data.chat_data import hh_to_pref

    rows = []
    for ln in HH.read_text().splitlines():
        r = json.loads(ln)
        pref, _ = hh_to_pref(r["chosen"], r["rejected"])
        if pref:
            rows.append({"prompt": pref["prompt"]})
    random.Random(0).shuffle(rows)
    for i, r in enumerate(rows):
        r["split"] = "val" if i < 64 else "train"
    data = write_jsonl(tmp / "hh_prompts.jsonl", rows)
    cfg = RLConfig(algo="ppo", reward=["rm"], reward_model=args.reward_model, rollout_prompts=16, epochs=2,
                   max_new_tokens=32, max_prompt_len=192, temperature=1.0, beta=args.beta, target_kl=args.target_kl,
                   val_limit=64, train=TrainConfig(steps=args.steps, batch_size=16, micro_batch=16, lr=args.lr,
                                                   warmup_steps=0, schedule="constant",
                                                   eval_every=args.eval_every, ckpt_every=args.steps,
                                                   weight_decay=0.0))
    t0 = time.time()
    s = run_rl(data, args.sft, tmp / "ppo", cfg)
    t = time.time() - t0
    start = s["data"]["val_reward_start"]
    print("\n== PPO against the reward model on HH-RLHF prompts (64 held out, greedy answers)")
    print(f"{args.steps} steps in {t:.0f} s")
    print(f"held-out mean RM score: SFT {start:.3f}  " +
          "  ".join(f"step {st}: {v:.3f}" for st, v in curve(tmp / "ppo", "val_reward")))
    kl = curve(tmp / "ppo", "objective/kl")
    print("rollout RM score: " + " ".join(f"{v:.2f}" for _, v in curve(tmp / "ppo", "objective/scores")))
    print("KL per completion: " + " ".join(f"{v:.3f}" for _, v in kl) + f" (target {args.target_kl})")
    val = curve(tmp / "ppo", "val_reward")
    ok = val[-1][1] > start and max(v for _, v in kl) <= 2 * args.target_kl
    print(f"held-out RM score {val[-1][1] - start:+.3f}; max KL {max(v for _, v in kl):.3f} -> "
          f"{'PASS' if ok else 'FAIL'}; work dir {tmp}")


def gen(args: argparse.Namespace) -> None:
    """Generation tokens/s: llmctl's engine vs transformers `generate` on the same exported model and batch."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmctl.checkpoint import load_checkpoint, save_checkpoint
    from llmctl.export import export_hf
    from llmctl.generate import generate_batch
    from llmctl.model import ModelConfig, Transformer
    from llmctl.tokenizer import Tokenizer

    torch.set_num_threads(args.threads)
    tmp = Path(args.work or tempfile.mkdtemp(prefix="rl-bench-gen-"))
    ck = args.checkpoint
    if ck is None:
        tok = Tokenizer.train([f"What is {a} plus {b}? #### {a + b}" for a in range(20) for b in range(20)] * 3,
                              vocab_size=380)
        tok.save(tmp / "tok")
        mc = ModelConfig(vocab_size=tok.vocab_size, n_layer=args.layers, n_head=4, d_model=args.d_model,
                         max_seq_len=256)
        torch.manual_seed(0)
        save_checkpoint(tmp / "ck", Transformer(mc), mc, tok.path)
        ck = tmp / "ck"
    model, mc, _, _ = load_checkpoint(ck)
    export_hf(ck, tmp / "hf", overwrite=True)
    hf = AutoModelForCausalLM.from_pretrained(tmp / "hf", dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(8, 24, (args.batch,), generator=g).tolist()
    prompts = [torch.randint(10, mc.vocab_size, (n,), generator=g).tolist() for n in lens]
    width = max(lens)
    ids = torch.zeros(args.batch, width, dtype=torch.long)
    att = torch.zeros(args.batch, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        att[i, width - len(p):] = 1

    def ours() -> int:
        return generate_batch(model, prompts, args.new_tokens, temperature=0.0, stop_ids=()).new_tokens

    @torch.no_grad()
    def theirs() -> int:
        out = hf.generate(input_ids=ids, attention_mask=att, max_new_tokens=args.new_tokens,
                          min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
        return (out.shape[1] - width) * args.batch

    rates = {}
    for name, fn in (("llmctl generate_batch", ours), ("transformers generate", theirs)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            n = fn()
            best = min(best, time.perf_counter() - t)
        rates[name] = n / best
        print(f"{name:>24}: {n} tokens in {best:.3f} s = {n / best:,.0f} tokens/s (best of {args.repeats})")
    a, b = rates["llmctl generate_batch"], rates["transformers generate"]
    same = [r[-args.new_tokens:] for r in generate_batch(model, prompts, args.new_tokens, temperature=0.0,
                                                           stop_ids=()).tokens]
    with torch.no_grad():
        hf_out = hf.generate(input_ids=ids, attention_mask=att, max_new_tokens=args.new_tokens,
                             min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    agree = sum(x == y for x, y in zip(same, hf_out[:, width:].tolist()))
    print(f"ratio llmctl / transformers: {a / b:.2f}x (floor 1.0) -> {'PASS' if a >= b else 'FAIL'}; "
          f"greedy outputs identical for {agree}/{args.batch} rows")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grpo")
    g.add_argument("--sft-steps", type=int, default=250)
    g.add_argument("--rl-steps", type=int, default=40)
    g.add_argument("--eval-every", type=int, default=10)
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--sft", default=None, help="reuse this SFT run (from an earlier --work) instead of training one")
    g.add_argument("--beta", type=float, default=0.0)
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--d-model", type=int, default=64)
    p = sub.add_parser("ppo")
    p.add_argument("--sft", required=True)
    p.add_argument("--reward-model", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--target-kl", type=float, default=1.0)
    q = sub.add_parser("gen")
    q.add_argument("--checkpoint", default=None, help="llmctl checkpoint (default: a random model of --layers/--d-model)")
    q.add_argument("--batch", type=int, default=16)
    q.add_argument("--new-tokens", type=int, default=64)
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--layers", type=int, default=4)
    q.add_argument("--d-model", type=int, default=128)
    for s in (g, p, q):
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--work", default=None)
    args = ap.parse_args()
    {"grpo": grpo, "ppo": ppo, "gen": gen}[args.cmd](args)


if __name__ == "__main__":
    main()
