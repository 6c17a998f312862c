"""llmctl rl learns: GRPO on two-number addition, PPO against the HH-RLHF reward model.

    .venv/bin/python benchmarks/rl.py grpo [--sft-seeds 0,1,2] [--seeds 0,1] [--n 32] [--held-out 500] [--demos 200]
        [--sft-steps 250] [--rl-steps 150] [--lr 3e-4] [--warmup 20] [--rollout-prompts 64] [--floor 0]
        [--threads 1] [--work DIR] [--no-check-eval]
    .venv/bin/python benchmarks/rl.py ppo --sft RUN/sft --reward-model RUN/reward [--steps 200]
    .venv/bin/python benchmarks/rl.py gen [--batch 16] [--new-tokens 64] [--checkpoint CKPT]

grpo: generates "What is A plus B?" -> "#### A+B" for every A, B < n (`--held-out` of them held out
by a seeded shuffle, as a `split` column; with 500, two standard errors of a held-out accuracy are
at most 4.5 points), trains a BPE tokenizer, and for each SFT seed a random 2-layer model of width
`--d-model` (initialised from the seed) SFT'd (llmctl sft) on `--demos` training problems sampled
by the seed (0: all of them), so that it learns the format and some sums. From each SFT model,
one GRPO run per RL seed (llmctl rl --algo grpo, exact_match reward: eval's extraction;
`--rollout-prompts` prompts x G completions a rollout, one optimizer step per rollout, `--warmup`
steps of linear lr warmup then constant, no KL) on all training prompts: problems and answers
only, most of them never demonstrated. Held-out accuracy is greedy exact match on the held-out
problems (rl's val_reward), which neither stage trains on. Prints a table of SFT seed x RL seed:
the accuracy after SFT, at every evaluation and the gain, then the gain's mean and spread per SFT
start and over all runs, and checks the floor: every run gains at least `--floor` points. Then
`llmctl eval --task exact_match --chat` re-scores the first run's final model on the held-out
problems, which must give the run's own last figure. Accuracy figures are deterministic for the
seeds and --threads; runs already finished in --work are reused, so the grid can be run in pieces
(e.g. --sft-seeds 0, then 1, then 0,1,2 for the table). add_grpo_args' own defaults (a 2x64 model,
8 prompts a rollout, lr 5e-5, no warmup) are what benchmarks/rl_trl.py starts from; `grpo` sets the
recipe above.

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
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "examples" / "prefs" / "hh_rlhf_harmless_base.jsonl"


def addition(n: int = 32, held_out: int = 400, seed: int = 0) -> list[dict]:
    """Every "What is A plus B?" for A, B < n, shuffled by `seed`; the first `held_out` get split "val"."""
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


def sft_rows(rows: list[dict], demos: int, seed: int) -> list[dict]:
    """The SFT data: `demos` training problems (a seeded sample) with their answers, plus the held-out ones."""
    train = [r for r in rows if r["split"] == "train"]
    picked = random.Random(1000 + seed).sample(train, min(demos, len(train))) if demos else train
    return picked + [r for r in rows if r["split"] == "val"]


def addition_sft(args: argparse.Namespace, tmp: Path, seed: int = 0) -> tuple[Path, Path, float]:
    """The addition prompts (TMP/addition.jsonl) and a briefly SFT'd model (args.sft, or TMP/sft-seedS: a
    model initialised from `seed`, SFT'd on `args.demos` training problems sampled by `seed`, in an
    order from `seed`; reused when TMP already holds it)."""
    import torch

    from llmctl.model.checkpoint import save_checkpoint
    from llmctl.model.transformer import ModelConfig, Transformer
    from llmctl.tokenizer.spm import Tokenizer
    from llmctl.train.loop import TrainConfig
    from llmctl.train.sft import SFTConfig, run_sft

    rows = addition(args.n, args.held_out)
    data = write_jsonl(tmp / "addition.jsonl", rows)
    sft_dir = Path(args.sft) if args.sft else tmp / f"sft-seed{seed}"
    t0 = time.time()
    if not args.sft and not (sft_dir / "manifest.json").is_file():
        if not (tmp / "tok").is_dir():
            tok = Tokenizer.train(
                [f"What is {a} plus {b}? #### {a + b}" for a in range(args.n) for b in range(args.n)] * 3,
                vocab_size=380,
            )
            tok.save(tmp / "tok")
        tok = Tokenizer.load(tmp / "tok")
        mc = ModelConfig(vocab_size=tok.vocab_size, n_layer=args.layers, n_head=4, d_model=args.d_model, max_seq_len=64)
        torch.manual_seed(seed)
        save_checkpoint(tmp / f"init-seed{seed}", Transformer(mc), mc, tok.path)
        sft_data = write_jsonl(tmp / f"sft-seed{seed}.jsonl", sft_rows(rows, args.demos, seed))
        sft_cfg = SFTConfig(
            max_len=64,
            train=TrainConfig(
                steps=args.sft_steps,
                batch_size=16,
                micro_batch=16,
                lr=args.sft_lr,
                warmup_steps=20,
                eval_every=args.sft_steps,
                ckpt_every=args.sft_steps,
                weight_decay=0.0,
                seed=seed,
            ),
        )
        run_sft(sft_data, tmp / f"init-seed{seed}", sft_dir, sft_cfg, overwrite=True)
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
        temperature=args.temperature,
        beta=args.beta,
        val_limit=args.held_out,
        train=TrainConfig(
            steps=steps,
            batch_size=args.rollout_prompts * args.G // args.steps_per_rollout,
            micro_batch=32,
            lr=args.lr,
            warmup_steps=args.warmup,
            schedule="constant",
            beta2=args.adam_beta2,
            embed_lr=args.embed_lr,
            eval_every=eval_every,
            ckpt_every=steps,
            weight_decay=0.0,
        ),
    )


def add_grpo_args(g: argparse.ArgumentParser) -> None:
    g.add_argument("--sft-steps", type=int, default=250)
    g.add_argument("--demos", type=int, default=0, help="SFT on this many training problems (0: all of them)")
    g.add_argument("--lr", type=float, default=5e-5)
    g.add_argument("--warmup", type=int, default=0, help="GRPO: steps of linear lr warmup (then constant)")
    g.add_argument("--temperature", type=float, default=1.0, help="GRPO: sampling temperature of the rollouts")
    g.add_argument("--adam-beta2", type=float, default=0.95, help="GRPO: Adam's beta2")
    g.add_argument("--embed-lr", type=float, default=None, help="GRPO: the (tied) embedding's own lr (default --lr)")
    g.add_argument("--sft-lr", type=float, default=3e-3)
    g.add_argument("--sft", default=None, help="reuse this SFT run instead of training one")
    g.add_argument("--beta", type=float, default=0.0)
    g.add_argument("--n", type=int, default=24, help="problems are A plus B for A, B < n")
    g.add_argument("--held-out", type=int, default=400, help="problems held out (held-out accuracy is on these)")
    g.add_argument("-G", type=int, default=8, help="completions per prompt")
    g.add_argument("--rollout-prompts", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, default=8)
    g.add_argument("--steps-per-rollout", type=int, default=1, help="optimizer steps per rollout (1: fully on-policy)")
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--d-model", type=int, default=64)
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--work", default=None, help="work directory; SFT and GRPO runs already finished there are reused")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x != ""]


def _sd(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1)) ** 0.5


def grpo(args: argparse.Namespace) -> None:
    import torch

    from llmctl.train.rl.trainer import run_rl

    torch.set_num_threads(args.threads)
    tmp = Path(args.work or tempfile.mkdtemp(prefix="rl-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    print(
        f"== GRPO on two-number addition: A + B for A, B < {args.n}, {args.held_out} held out "
        f"(held-out accuracy = greedy exact match); SFT on {args.demos or 'all'} demonstrations, "
        f"{args.sft_steps} steps; GRPO {args.rl_steps} steps"
    )
    keys = ("n", "held_out", "demos", "sft_steps", "sft_lr", "rl_steps", "eval_every", "lr", "warmup", "beta", "G")
    keys += ("rollout_prompts", "temperature", "adam_beta2", "embed_lr")
    sig = {k: getattr(args, k) for k in (*keys, "max_new_tokens", "steps_per_rollout", "layers", "d_model", "threads")}
    sig_path = tmp / "settings.json"
    if sig_path.is_file() and json.loads(sig_path.read_text()) != sig:
        sys.exit(f"{tmp} holds runs made with other settings ({sig_path}): use another --work")
    sig_path.write_text(json.dumps(sig))
    cells: dict[tuple[int, int], dict[str, Any]] = {}
    for s in _ints(args.sft_seeds):
        data, sft_dir, t_sft = addition_sft(args, tmp, s)
        for r in _ints(args.seeds):
            run = tmp / f"rl-sft{s}-seed{r}"
            res_path = run / "bench.json"
            if res_path.is_file():
                cells[s, r] = json.loads(res_path.read_text())
                continue
            cfg = grpo_config(args, args.rl_steps, args.eval_every)
            cfg.train.seed = r
            t1 = time.time()
            summary = run_rl(data, sft_dir, run, cfg, overwrite=True)
            rew = curve(run, "reward")
            win = max(1, len(rew) // 10)
            res = {
                "sft_seconds": t_sft,
                "rl_seconds": time.time() - t1,
                "start": summary["data"]["val_reward_start"],
                "val": curve(run, "val_reward"),
                "reward": [
                    sum(v for _, v in rew[i : i + win]) / len(rew[i : i + win]) for i in range(0, len(rew), win)
                ],
            }
            res_path.write_text(json.dumps(res))
            cells[s, r] = res
            t_sft = 0.0
    print(
        f"\n{'SFT seed':>8} {'RL seed':>7} {'SFT':>6}  held-out accuracy every {args.eval_every} steps; gain; seconds"
    )
    gains: dict[int, list[float]] = {}
    for (s, r), c in cells.items():
        g = 100 * (c["val"][-1][1] - c["start"])
        gains.setdefault(s, []).append(g)
        print(
            f"{s:>8} {r:>7} {100 * c['start']:>5.1f}%  "
            + " ".join(f"{100 * v:>5.1f}" for _, v in c["val"])
            + f"  {g:>+6.1f}  SFT {c['sft_seconds']:.0f} + GRPO {c['rl_seconds']:.0f}"
        )
        print(f"{'':>17}rollout reward (tenths of the run): " + " ".join(f"{v:.2f}" for v in c["reward"]))
    every = [g for gs in gains.values() for g in gs]
    accs = [c["start"] for c in cells.values()] + [v for c in cells.values() for _, v in c["val"]]
    se = 100 * max((p * (1 - p) / args.held_out) ** 0.5 for p in accs)
    print(
        "\ngain by SFT start: "
        + "; ".join(
            f"SFT seed {s} ({100 * cells[s, _ints(args.seeds)[0]]['start']:.1f}%): "
            f"{sum(gs) / len(gs):+.1f} +- {_sd(gs):.1f}"
            for s, gs in gains.items()
        )
    )
    ok = min(every) >= args.floor
    print(
        f"gain over all {len(every)} SFT x RL runs: mean {sum(every) / len(every):+.1f} points, sd {_sd(every):.1f}, "
        f"range {min(every):+.1f} .. {max(every):+.1f}; one s.e. of a held-out accuracy <= {se:.1f} points "
        f"(two: {2 * se:.1f})\n"
        f"floor: every run gains >= {args.floor:+g} points -> {'PASS' if ok else 'FAIL'}"
    )
    if args.check_eval:
        check_eval(args, tmp, *next(iter(cells)), cells[next(iter(cells))])
    print(
        f"this invocation {time.time() - t_start:.0f} s; load average at end: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; work dir {tmp}"
    )


def check_eval(args: argparse.Namespace, tmp: Path, s: int, r: int, cell: dict[str, Any]) -> None:
    """`llmctl eval --task exact_match --chat` on the held-out problems with the final GRPO model of
    (SFT seed s, RL seed r): its exact match must equal the run's last held-out accuracy."""
    import subprocess

    rows = [x for x in addition(args.n, args.held_out) if x["split"] == "val"]
    em = write_jsonl(tmp / "held_out_em.jsonl", [{"question": x["prompt"], "answer": x["answer"]} for x in rows])
    out = tmp / f"eval-sft{s}-seed{r}"
    cmd = [sys.executable, "-m", "llmctl", "eval", str(tmp / f"rl-sft{s}-seed{r}"), "-o", str(out), "--overwrite"]
    cmd += ["--task", "exact_match", "--em-data", str(em), "--chat"]
    cmd += ["--set", f"exact_match.max_new_tokens={args.max_new_tokens}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    results = json.loads((out / "_manifest.json").read_text())["stats"]["results"]
    em_acc = next(x["value"] for x in results if x["metric"] == "exact_match")
    ours = cell["val"][-1][1]
    print(
        f"llmctl eval --task exact_match --chat on the final model of SFT seed {s} / RL seed {r}: "
        f"{100 * em_acc:.1f}% vs the run's held-out accuracy {100 * ours:.1f}% -> "
        f"{'same' if abs(em_acc - ours) < 1e-9 else 'DIFFERENT'}"
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
    g.add_argument("--rl-steps", type=int, default=150)
    g.add_argument("--eval-every", type=int, default=50)
    g.add_argument(
        "--sft-seeds", default="0,1,2", help="one SFT model per seed (initialisation, demonstrations, order)"
    )
    g.add_argument("--seeds", default="0,1", help="one GRPO run from each SFT model per seed (sampling, shuffles)")
    g.add_argument("--floor", type=float, default=0.0, help="the smallest gain every SFT x RL run must reach (points)")
    g.add_argument(
        "--check-eval",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="re-score the first run's final model with `llmctl eval --task exact_match --chat`",
    )
    # the grid's recipe (add_grpo_args' defaults are benchmarks/rl_trl.py's model and batch)
    g.set_defaults(n=32, held_out=500, demos=200, d_model=128, rollout_prompts=64, lr=3e-4, warmup=20)
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
