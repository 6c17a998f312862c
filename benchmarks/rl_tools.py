"""llmctl rl learns to use a calculator: SFT on tool-call demonstrations, then GRPO with `--tool calculator`.

    .venv/bin/python benchmarks/rl_tools.py [--train 400] [--held-out 500] [--sft-steps 1200] [--rl-steps 100] \
        [--seeds 0,1,2] [--threads 1] [--work DIR]
    .venv/bin/python benchmarks/rl_tools.py --smoke        # seconds: checks the script runs, no figures

Task: "What is A times B?" for a three-digit A and a two-digit B (a 4-5 digit product that a
2-layer model cannot compute in its head). SFT data are `messages` with a tool turn: the
assistant calls `calculator A*B`, the tool answers P, the assistant writes `#### P`; with llmctl's
tool tokens the model writes `<|tool_call|>calculator A*B<|/tool_call|>`, is fed
`<|tool_output|>P<|/tool_output|>`, and copies P. A BPE tokenizer (digits split) is trained here;
per seed, a random 2-layer model (d 64) is SFT'd (llmctl sft) on --train demonstrations, then
trained with llmctl rl --algo grpo --tool calculator and the exact_match reward. Held-out accuracy
is greedy exact match on --held-out problems never seen in training (two standard errors at most
4.5 points at 500).

Prints per seed the held-out accuracy of the SFT model answering without the tool (after its call
nothing is fed: it must write the product itself), with the tool, and after GRPO with the tool,
the tool calls and cut-offs and the wall time; then means and spreads over seeds. Floor: GRPO
with the tool >= the same SFT model without the tool + 20 points, every seed, each seed (SFT + RL
+ evaluations) under 15 minutes on 2 cores.
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
    """Distinct (A, B) pairs, A three digits, B two: the held-out ones first."""
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    while len(seen) < n_train + n_val:
        seen.add((rng.randrange(100, 1000), rng.randrange(10, 100)))
    pairs = sorted(seen)
    rng.shuffle(pairs)
    return [{"a": a, "b": b, "split": "val" if i < n_val else "train"} for i, (a, b) in enumerate(pairs)]


def demonstration(r: dict) -> dict:
    """A tool-call SFT row: the assistant calls the calculator, the tool answers, the assistant copies it."""
    a, b = r["a"], r["b"]
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": f"{a}*{b}"}}}
    return {
        "messages": [
            {"role": "user", "content": f"What is {a} times {b}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": str(a * b)},
            {"role": "assistant", "content": f"#### {a * b}"},
        ],
        "split": r["split"],
    }


def prompt_row(r: dict) -> dict:
    return {"prompt": f"What is {r['a']} times {r['b']}?", "answer": f"#### {r['a'] * r['b']}", "split": r["split"]}


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
    p.add_argument("--train", type=int, default=400, help="SFT demonstrations (and RL training prompts)")
    p.add_argument("--held-out", type=int, default=500)
    p.add_argument("--sft-steps", type=int, default=1200)
    p.add_argument("--rl-steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=5e-5, help="GRPO learning rate")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny settings: check the script runs (no figures)")
    args = p.parse_args()
    if args.smoke:
        args.train, args.held_out, args.sft_steps, args.rl_steps, args.seeds = 48, 8, 10, 2, "0"

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
    sft_data = write_jsonl(tmp / "demos.jsonl", [demonstration(r) for r in rows])
    data = write_jsonl(tmp / "prompts.jsonl", [prompt_row(r) for r in rows])
    tok = Tokenizer.train(
        [f"What is {r['a']} times {r['b']}? calculator {r['a']}*{r['b']} #### {r['a'] * r['b']}" for r in rows],
        vocab_size=400,
    )
    tok.save(tmp / "tok")

    def cfg(tools: list[str], seed: int) -> RLConfig:
        return RLConfig(
            algo="grpo",
            reward=["exact_match"],
            num_generations=8,
            rollout_prompts=8,
            max_new_tokens=32,
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
                eval_every=args.rl_steps,
                ckpt_every=args.rl_steps,
                weight_decay=0.0,
                seed=seed,
            ),
        )

    se = lambda q: 100 * math.sqrt(max(q * (1 - q), 1e-12) / args.held_out)  # noqa: E731
    print(f"== calculator tool use: 'What is A times B?' (A 3 digits, B 2), {args.held_out} held-out problems, greedy")
    res = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        t1 = time.time()
        mc = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=64, max_seq_len=64)
        torch.manual_seed(seed)
        save_checkpoint(tmp / f"init{seed}", Transformer(mc), mc, tok.path)
        sft = TrainConfig(
            steps=args.sft_steps,
            batch_size=16,
            micro_batch=16,
            lr=3e-3,
            warmup_steps=min(20, args.sft_steps // 2),
            eval_every=args.sft_steps,
            ckpt_every=args.sft_steps,
            weight_decay=0.0,
            seed=seed,
        )
        sft_dir = tmp / f"sft{seed}"
        run_sft(sft_data, tmp / f"init{seed}", sft_dir, SFTConfig(max_len=64, train=sft), overwrite=True)
        no_tool = held_out_accuracy(sft_dir, data, cfg([], seed))
        run = tmp / f"rl{seed}"
        s = run_rl(data, sft_dir, run, cfg(["calculator"], seed), overwrite=True)
        with_tool, final = s["data"]["val_reward_start"], s["val_reward"]
        recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        calls = sum(r.get("tools/calls", 0) for r in recs)
        cut = {k: sum(r.get(f"tools/cutoff/{k}", 0) for r in recs) for k in ("timeout", "error", "max_calls")}
        res.append((no_tool, with_tool, final, time.time() - t1))
        print(
            f"-- seed {seed}: SFT {args.sft_steps} steps on {args.train} demos: without the tool "
            f"{100 * no_tool:.1f}%, with it {100 * with_tool:.1f}%; GRPO {args.rl_steps} steps with it: "
            f"{100 * final:.1f}% (2 SE {2 * se(final):.1f}); {calls:.0f} tool calls in rollouts, cut off {cut}; "
            f"{time.time() - t1:.0f} s",
            flush=True,
        )
    gains = [100 * (f - n) for n, _, f, _ in res]
    rl_gain = [100 * (f - w) for _, w, f, _ in res]
    spread = lambda xs: (max(xs) - min(xs)) if len(xs) > 1 else 0.0  # noqa: E731
    mean = lambda xs: statistics.mean(xs)  # noqa: E731
    worst = max(t for *_, t in res)
    ok = min(gains) >= 20 and worst < 900
    print(
        f"SFT without the tool {mean([100 * r[0] for r in res]):.1f}%, with it {mean([100 * r[1] for r in res]):.1f}%, "
        f"GRPO with it {mean([100 * r[2] for r in res]):.1f}% (means over {len(res)} seeds; "
        f"2 SE of one figure at most {2 * se(0.5):.1f} points)"
    )
    print(
        f"GRPO with the tool vs SFT without it: {mean(gains):+.1f} points (spread {spread(gains):.1f}, "
        f"smallest {min(gains):+.1f}); GRPO's own part {mean(rl_gain):+.1f} (spread {spread(rl_gain):.1f}); "
        f"floor +20 each seed, under 15 min a seed (slowest {worst:.0f} s) -> {'PASS' if ok else 'FAIL'}; work dir {tmp}"
    )


if __name__ == "__main__":
    main()
