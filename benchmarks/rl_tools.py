"""llmctl rl learns to use a calculator: SFT on tool-call demonstrations, then GRPO with `--tool calculator`.

    .venv/bin/python benchmarks/rl_tools.py [--train 400] [--held-out 200] [--sft-steps 300] [--rl-steps 100] \
        [--seeds 0,1,2] [--threads 2] [--work DIR]
    .venv/bin/python benchmarks/rl_tools.py --smoke        # seconds: checks the script runs, no figures

Task: "What is A times B?" for two-digit A and B (a product a 2-layer model cannot compute in its
head), answered "<<A*B=P>> #### P": the model writes the call `<<A*B=`, the calculator appends
`P>>`, the model copies P after '####'. A BPE tokenizer (digits split) and a random 2-layer model
are trained here; SFT (llmctl sft) on --train demonstrations with the calls written out teaches
the format; then llmctl rl --algo grpo --tool calculator with the exact_match reward, once per
seed from the same SFT model. Held-out accuracy is greedy exact match on --held-out problems
(two standard errors under 5 points needs about 400 at 50%; report the SE printed).

Prints the held-out accuracy of the SFT model without the tool (its own digits after `<<A*B=`),
with the tool, and after GRPO with the tool (per seed: mean, spread), the tool calls and cut-offs,
and the wall time. Floor: GRPO with the tool >= SFT without the tool + 20 points, every seed, the
whole run under 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def problems(n_train: int, n_val: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pairs = rng.sample([(a, b) for a in range(10, 100) for b in range(10, 100)], n_train + n_val)
    return [
        {
            "prompt": f"What is {a} times {b}?",
            "response": f"<<{a}*{b}={a * b}>> #### {a * b}",
            "answer": f"#### {a * b}",
            "split": "val" if i < n_val else "train",
        }
        for i, (a, b) in enumerate(pairs)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def held_out_accuracy(ckpt: Path, data: Path, cfg) -> float:
    """Greedy exact match of `ckpt` on the held-out problems, calling cfg.tools (none: no tool)."""
    from llmctl.train import distributed as D
    from llmctl.train.finetune import load_start
    from llmctl.train.rl.rewards import Rewards
    from llmctl.train.rl.rollout import load_prompts, make_toolbox
    from llmctl.train.rl.trainer import held_out_reward

    D.init("cpu")
    model, _, tok, _ = load_start(ckpt)
    _, val, _, _ = load_prompts(data, tok, cfg.max_prompt_len, cfg.val_fraction, cfg.train.seed)
    res, _ = held_out_reward(model, val, tok, Rewards(["exact_match"]), cfg, tools=make_toolbox(cfg))
    return res["val_reward"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--held-out", type=int, default=200)
    p.add_argument("--sft-steps", type=int, default=300)
    p.add_argument("--rl-steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny settings: check the script runs (no figures)")
    args = p.parse_args()
    if args.smoke:
        args.train, args.held_out, args.sft_steps, args.rl_steps, args.eval_every, args.seeds = 48, 8, 10, 2, 2, "0"

    import torch

    from llmctl.model.checkpoint import save_checkpoint
    from llmctl.model.transformer import ModelConfig, Transformer
    from llmctl.tokenizer.spm import Tokenizer
    from llmctl.train.loop import TrainConfig
    from llmctl.train.rl.trainer import RLConfig, run_rl
    from llmctl.train.sft import SFTConfig, run_sft

    torch.set_num_threads(args.threads)
    tmp = Path(args.work or tempfile.mkdtemp(prefix="rl-tools-"))
    tmp.mkdir(parents=True, exist_ok=True)
    rows = problems(args.train, args.held_out)
    data = write_jsonl(tmp / "products.jsonl", rows)
    t0 = time.time()
    tok = Tokenizer.train([f"{r['prompt']} {r['response']}" for r in rows] * 2, vocab_size=380)
    tok.save(tmp / "tok")
    mc = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=64, max_seq_len=64)
    torch.manual_seed(0)
    save_checkpoint(tmp / "init", Transformer(mc), mc, tok.path)
    sft = TrainConfig(
        steps=args.sft_steps,
        batch_size=16,
        micro_batch=16,
        lr=3e-3,
        warmup_steps=min(20, args.sft_steps // 2),
        eval_every=args.sft_steps,
        ckpt_every=args.sft_steps,
        weight_decay=0.0,
    )
    run_sft(data, tmp / "init", tmp / "sft", SFTConfig(max_len=64, train=sft), overwrite=True)
    t_sft = time.time() - t0

    def cfg(tools: list[str], seed: int = 0) -> RLConfig:
        return RLConfig(
            algo="grpo",
            reward=["exact_match"],
            num_generations=8,
            rollout_prompts=8,
            max_new_tokens=24,
            max_prompt_len=32,
            beta=0.0,
            val_limit=args.held_out,
            tools=tools,
            train=TrainConfig(
                steps=args.rl_steps,
                batch_size=64,
                micro_batch=32,
                lr=args.lr,
                warmup_steps=0,
                schedule="constant",
                eval_every=args.eval_every,
                ckpt_every=args.rl_steps,
                weight_decay=0.0,
                seed=seed,
            ),
        )

    no_tool = held_out_accuracy(tmp / "sft", data, cfg([]))
    with_tool = held_out_accuracy(tmp / "sft", data, cfg(["calculator"]))
    se = lambda p: 100 * math.sqrt(max(p * (1 - p), 1e-12) / args.held_out)  # noqa: E731
    print(f"\n== calculator tool use on two-digit products ({args.held_out} held-out problems, greedy exact match)")
    print(f"SFT {args.sft_steps} steps on {args.train} demonstrations: {t_sft:.0f} s")
    print(f"SFT without the tool: {100 * no_tool:.1f}% (SE {se(no_tool):.1f});  with it: {100 * with_tool:.1f}%")
    finals = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        t1 = time.time()
        run = tmp / f"rl-seed{seed}"
        s = run_rl(data, tmp / "sft", run, cfg(["calculator"], seed), overwrite=True)
        recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        calls = sum(r.get("tools/calls", 0) for r in recs)
        cut = {k: sum(r.get(f"tools/cutoff/{k}", 0) for r in recs) for k in ("timeout", "error", "max_calls")}
        finals.append(s["val_reward"])
        print(
            f"-- RL seed {seed}: GRPO {args.rl_steps} steps in {time.time() - t1:.0f} s: held-out "
            f"{100 * s['data']['val_reward_start']:.1f}% -> {100 * s['val_reward']:.1f}% (SE {se(s['val_reward']):.1f}); "
            f"{calls:.0f} tool calls in rollouts, cut off {cut}"
        )
    gains = [100 * (f - no_tool) for f in finals]
    spread = statistics.pstdev(gains) if len(gains) > 1 else 0.0
    ok = min(gains) >= 20 and time.time() - t0 < 900
    print(
        f"GRPO with the tool vs SFT without it: {statistics.mean(gains):+.1f} points (spread {spread:.1f}, "
        f"smallest {min(gains):+.1f}; floor +20 each, under 15 min: {time.time() - t0:.0f} s) -> "
        f"{'PASS' if ok else 'FAIL'}; work dir {tmp}"
    )


if __name__ == "__main__":
    main()
