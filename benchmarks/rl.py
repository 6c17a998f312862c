"""llmctl rl learns: GRPO on two-number addition, PPO against the HH-RLHF reward model.

    .venv/bin/python benchmarks/rl.py grpo [--sft-steps 250] [--rl-steps 300] [--seeds 0,1,2] [--threads 2] [--sft WORK/sft]
    .venv/bin/python benchmarks/rl.py ppo --sft RUN/sft --reward-model RUN/reward [--steps 200]
    .venv/bin/python benchmarks/rl.py gen [--batch 16] [--new-tokens 64] [--checkpoint CKPT]

grpo: generates "What is A plus B?" -> "#### A+B" problems (A, B < 20; 80 of the 400 held out by a
seeded shuffle, as a `split` column), trains a BPE tokenizer and a random 2-layer model, SFTs it
briefly (llmctl sft: it learns the format and some sums), then runs llmctl rl --algo grpo with the
exact_match reward (eval's extraction), 8 prompts x G 8 per rollout, one optimizer step per rollout,
lr 5e-5, no KL (beta 0), once per seed from the same SFT model. Prints the held-out greedy accuracy
(rl's val_reward) before RL and at every evaluation, the rollout reward curve, and the wall time of
each phase. Floor: +15 points of held-out accuracy within 10 minutes on 2 cores (every seed).

ppo: llmctl rl --algo ppo from an SFT run against a reward model (e.g. `make demo`'s out/demo/sft
and out/demo/reward) on the HH-RLHF prompts of examples/prefs (128 held out); 16 prompts a
rollout, 32 new tokens, 2 PPO epochs, lr 3e-5, the adaptive KL controller from beta 0.1 toward
--target-kl 2.0 (horizon 500 completions). Prints the mean reward-model score of held-out answers
(val_reward: 2 sampled answers a prompt at temperature 1, as the rollouts sample, from the same
seed at each evaluation; --val-temperature 0 for greedy) before and during PPO, and the KL to the
SFT model per completion (objective/kl), averaged over each evaluation window, against the target.
Pass: the held-out score rises and no window's mean KL is above the target.

gen: generation tokens/s of the shared engine (llmctl.model.generate.generate_batch: left-padded batch,
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
from typing import Any

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "examples" / "prefs" / "hh_rlhf_harmless_base.jsonl"


def addition(n: int = 20, held_out: int = 80, seed: int = 0) -> list[dict]:
    rows = [
        {"prompt": f"What is {a} plus {b}?", "response": f"#### {a + b}", "answer": f"#### {a + b}"}
        for a in range(n)
        for b in range(n)
    ]
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


def addition_sft(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, float]:
    """The addition prompts (TMP/addition.jsonl) and a briefly SFT'd model (args.sft, or trained in TMP/sft)."""
    import torch

    from llmctl.model.checkpoint import save_checkpoint
    from llmctl.model.transformer import ModelConfig, Transformer
    from llmctl.tokenizer.spm import Tokenizer
    from llmctl.train.loop import TrainConfig
    from llmctl.train.sft import SFTConfig, run_sft

    rows = addition(args.n, args.held_out)
    data = write_jsonl(tmp / "addition.jsonl", rows)
    sft_dir = Path(args.sft) if args.sft else tmp / "sft"
    t0 = time.time()
    if not args.sft:
        tok = Tokenizer.train(
            [f"What is {a} plus {b}? #### {a + b}" for a in range(args.n) for b in range(args.n)] * 3, vocab_size=380
        )
        tok.save(tmp / "tok")
        mc = ModelConfig(vocab_size=tok.vocab_size, n_layer=args.layers, n_head=4, d_model=args.d_model, max_seq_len=64)
        torch.manual_seed(0)
        save_checkpoint(tmp / "init", Transformer(mc), mc, tok.path)
        sft_cfg = SFTConfig(
            max_len=64,
            train=TrainConfig(
                steps=args.sft_steps,
                batch_size=16,
                micro_batch=16,
                lr=3e-3,
                warmup_steps=20,
                eval_every=args.sft_steps,
                ckpt_every=args.sft_steps,
                weight_decay=0.0,
            ),
        )
        run_sft(data, tmp / "init", sft_dir, sft_cfg)
    return data, sft_dir, time.time() - t0


def grpo_config(args: argparse.Namespace, steps: int, eval_every: int) -> Any:
    """The benchmark's GRPO settings (also what benchmarks/rl_trl.py gives TRL's GRPOTrainer)."""
    from llmctl.train.loop import TrainConfig
    from llmctl.train.rl.trainer import RLConfig

    return RLConfig(
        algo="grpo",
        reward=["exact_match"],
        num_generations=args.G,
        rollout_prompts=args.rollout_prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        beta=args.beta,
        val_limit=args.held_out,
        train=TrainConfig(
            steps=steps,
            batch_size=args.rollout_prompts * args.G // args.steps_per_rollout,
            micro_batch=32,
            lr=args.lr,
            warmup_steps=0,
            schedule="constant",
            eval_every=eval_every,
            ckpt_every=steps,
            weight_decay=0.0,
        ),
    )


def add_grpo_args(g: argparse.ArgumentParser) -> None:
    g.add_argument("--sft-steps", type=int, default=250)
    g.add_argument("--lr", type=float, default=5e-5)
    g.add_argument("--sft", default=None, help="reuse this SFT run (from an earlier --work) instead of training one")
    g.add_argument("--beta", type=float, default=0.0)
    g.add_argument("--n", type=int, default=20, help="problems are A plus B for A, B < n")
    g.add_argument("--held-out", type=int, default=80, help="problems held out (held-out accuracy is on these)")
    g.add_argument("-G", type=int, default=8, help="completions per prompt")
    g.add_argument("--rollout-prompts", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, default=8)
    g.add_argument("--steps-per-rollout", type=int, default=1, help="optimizer steps per rollout (1: fully on-policy)")
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--d-model", type=int, default=64)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--work", default=None)


def grpo(args: argparse.Namespace) -> None:
    import torch

    from llmctl.train.rl.trainer import run_rl

    torch.set_num_threads(args.threads)
    tmp = Path(args.work or tempfile.mkdtemp(prefix="rl-bench-"))
    data, sft_dir, t_sft = addition_sft(args, tmp)
    cfg = grpo_config(args, args.rl_steps, args.eval_every)
    print(f"\n== GRPO on two-number addition (held-out accuracy = greedy exact match on {args.held_out} problems)")
    print(f"SFT {args.sft_steps} steps: {t_sft:.0f} s")
    gains, t_all = [], t_sft
    for seed in [int(x) for x in args.seeds.split(",")]:
        cfg.train.seed = seed
        t1 = time.time()
        run = tmp / f"rl-seed{seed}"
        s = run_rl(data, sft_dir, run, cfg, overwrite=True)
        t_rl = time.time() - t1
        t_all += t_rl
        start = s["data"]["val_reward_start"]
        val = curve(run, "val_reward")
        rew = curve(run, "reward")
        win = max(1, len(rew) // 10)
        gains.append(100 * (val[-1][1] - start))
        print(f"-- RL seed {seed}: GRPO {args.rl_steps} steps in {t_rl:.0f} s (SFT + GRPO: {t_sft + t_rl:.0f} s)")
        print(
            f"held-out accuracy: after SFT {100 * start:.1f}%  "
            + "  ".join(f"step {st}: {100 * v:.1f}%" for st, v in val)
        )
        print(
            f"rollout reward (mean exact match of sampled completions, averaged over {win} steps): "
            + " ".join(
                f"{sum(v for _, v in rew[i : i + win]) / len(rew[i : i + win]):.2f}" for i in range(0, len(rew), win)
            )
        )
        print(f"gain {gains[-1]:+.1f} points (floor +15) -> {'PASS' if gains[-1] >= 15 else 'FAIL'}")
    print(
        f"gains {', '.join(f'{g:+.1f}' for g in gains)} points; smallest {min(gains):+.1f} (floor +15) -> "
        f"{'PASS' if min(gains) >= 15 else 'FAIL'}; all runs {t_all:.0f} s; work dir {tmp}"
    )


def ppo(args: argparse.Namespace) -> None:
    import torch

    from llmctl.train.loop import TrainConfig
    from llmctl.train.rl.trainer import RLConfig, run_rl

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
        r["split"] = "val" if i < args.held_out else "train"
    data = write_jsonl(tmp / "hh_prompts.jsonl", rows)
    cfg = RLConfig(
        algo="ppo",
        reward=["rm"],
        reward_model=args.reward_model,
        rollout_prompts=16,
        epochs=2,
        max_new_tokens=32,
        max_prompt_len=192,
        temperature=1.0,
        beta=args.beta,
        target_kl=args.target_kl,
        kl_horizon=args.kl_horizon,
        val_limit=args.held_out,
        val_temperature=args.val_temperature,
        val_samples=args.val_samples,
        train=TrainConfig(
            steps=args.steps,
            batch_size=16,
            micro_batch=16,
            lr=args.lr,
            warmup_steps=0,
            schedule="constant",
            eval_every=args.eval_every,
            ckpt_every=args.steps,
            weight_decay=0.0,
        ),
    )
    t0 = time.time()
    s = run_rl(data, args.sft, tmp / "ppo", cfg, overwrite=True)
    t = time.time() - t0
    start = s["data"]["val_reward_start"]
    run = tmp / "ppo"
    val = curve(run, "val_reward")
    print(f"\n== PPO against the reward model on HH-RLHF prompts ({args.held_out} held out, greedy answers)")
    print(
        f"{args.steps} steps in {t:.0f} s; adaptive KL controller: beta {args.beta} at start, target {args.target_kl}"
    )
    print(f"held-out mean RM score: SFT {start:.3f}  " + "  ".join(f"step {st}: {v:.3f}" for st, v in val))
    win, worst = args.eval_every, 0.0
    for key, what in (
        ("objective/scores", "rollout RM score"),
        ("objective/kl", "KL to the SFT model per completion"),
        ("objective/kl_coef", "beta"),
    ):
        c = curve(run, key)
        means = [sum(v for _, v in c[i : i + win]) / len(c[i : i + win]) for i in range(0, len(c), win)]
        print(f"{what}, mean of each {win} steps: " + " ".join(f"{m:.3f}" for m in means))
        if key == "objective/kl":
            worst = max(means)
    gain = val[-1][1] - start
    ok = gain > 0 and worst <= args.target_kl
    print(
        f"held-out RM score {gain:+.3f}; largest KL of a {win}-step window {worst:.3f} (target {args.target_kl}) -> "
        f"{'PASS' if ok else 'FAIL'}; work dir {tmp}"
    )


def gen(args: argparse.Namespace) -> None:
    """Generation tokens/s: llmctl's engine vs transformers `generate` on the same exported model and batch."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmctl.export.hf import export_hf
    from llmctl.model.checkpoint import load_checkpoint, save_checkpoint
    from llmctl.model.generate import generate_batch
    from llmctl.model.transformer import ModelConfig, Transformer
    from llmctl.tokenizer.spm import Tokenizer

    torch.set_num_threads(args.threads)
    tmp = Path(args.work or tempfile.mkdtemp(prefix="rl-bench-gen-"))
    ck = args.checkpoint
    if ck is None:
        tok = Tokenizer.train(
            [f"What is {a} plus {b}? #### {a + b}" for a in range(20) for b in range(20)] * 3, vocab_size=380
        )
        tok.save(tmp / "tok")
        mc = ModelConfig(
            vocab_size=tok.vocab_size, n_layer=args.layers, n_head=4, d_model=args.d_model, max_seq_len=256
        )
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
        ids[i, width - len(p) :] = torch.tensor(p)
        att[i, width - len(p) :] = 1

    def ours() -> int:
        return generate_batch(model, prompts, args.new_tokens, temperature=0.0, stop_ids=()).new_tokens

    @torch.no_grad()
    def theirs() -> int:
        out = hf.generate(
            input_ids=ids,
            attention_mask=att,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
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
    same = [
        r[-args.new_tokens :]
        for r in generate_batch(model, prompts, args.new_tokens, temperature=0.0, stop_ids=()).tokens
    ]
    with torch.no_grad():
        hf_out = hf.generate(
            input_ids=ids,
            attention_mask=att,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    agree = sum(x == y for x, y in zip(same, hf_out[:, width:].tolist()))
    print(
        f"ratio llmctl / transformers: {a / b:.2f}x (floor 1.0) -> {'PASS' if a >= b else 'FAIL'}; "
        f"greedy outputs identical for {agree}/{args.batch} rows"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grpo")
    add_grpo_args(g)
    g.add_argument("--rl-steps", type=int, default=300)
    g.add_argument("--eval-every", type=int, default=50)
    g.add_argument(
        "--seeds", default="0,1,2", help="one GRPO run from the same SFT model per seed (sampling, shuffles)"
    )
    p = sub.add_parser("ppo")
    p.add_argument("--sft", required=True)
    p.add_argument("--reward-model", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=40)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--beta", type=float, default=0.1, help="the KL coefficient at the start")
    p.add_argument("--target-kl", type=float, default=2.0, help="the adaptive KL controller's target (per completion)")
    p.add_argument("--held-out", type=int, default=128)
    p.add_argument(
        "--val-temperature",
        type=float,
        default=1.0,
        help="held-out answers sampled as the rollouts are (0: greedy), from the same seed at each evaluation",
    )
    p.add_argument("--val-samples", type=int, default=2, help="sampled answers per held-out prompt")
    p.add_argument("--kl-horizon", type=int, default=500, help="the adaptive KL controller's horizon (completions)")
    q = sub.add_parser("gen")
    q.add_argument(
        "--checkpoint", default=None, help="llmctl checkpoint (default: a random model of --layers/--d-model)"
    )
    q.add_argument("--batch", type=int, default=16)
    q.add_argument("--new-tokens", type=int, default=64)
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--layers", type=int, default=4)
    q.add_argument("--d-model", type=int, default=128)
    for s in (p, q):
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--work", default=None)
    args = ap.parse_args()
    {"grpo": grpo, "ppo": ppo, "gen": gen}[args.cmd](args)


if __name__ == "__main__":
    main()
