"""Does the demo's GRPO stage beat its SFT stage for other seeds too? The demo's own stages, re-run per seed.

    .venv/bin/python benchmarks/demo_grpo.py [--run out/demo] [--sft-seeds 0,1,2] [--rl-seeds 0,1]
        [--work DIR] [--threads 2] [--pipeline pipelines/toy.yaml]

Takes the stages sft_data, sft, eval_sft, grpo and eval_grpo of the demo pipeline exactly as shipped,
adds `--seed` to `sft` (the order of the SFT examples) and to `grpo` (its prompt order and
sampling): the stages' default seed plus the SFT seed S or the RL seed R, so that S = R = 0 is the
demo itself; points ${pretrain} and ${tokens} at a finished demo run (`make demo`: --run), and runs
them with `llmctl run` for every SFT seed x RL seed (WORK/sftS_rlR; a finished combination is reused,
so the grid can be run in pieces). Prints, per combination, the held-out exact match of the SFT and
the GRPO model (greedy, the 150 held-out additions), the change, its paired standard error and the
change in standard errors: the row `llmctl run` prints for the demo (llmctl.cli.runner.stage_effects),
then the mean and spread of the change. The demo's claim (GRPO above SFT by more than two standard
errors) is checked for every combination; the exit status is 1 when one misses it. Figures are
deterministic for the seeds (and do not depend on --threads here: docs in examples/README.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sft_data", "sft", "eval_sft", "grpo", "eval_grpo")


def seeded_pipeline(pipeline: Path, run: Path, sft_seed: int, rl_seed: int) -> str:
    """The demo's SFT and GRPO stages with their seeds, reading the pretrained model and tokens of `run`."""
    import yaml

    from llmctl.cli.runner import load_pipeline
    from llmctl.train.loop import TrainConfig

    base = TrainConfig().seed  # what the shipped stages use: seed offset 0 is the demo itself

    pipe = load_pipeline(pipeline)
    stages = []
    for name in STAGES:
        cmd = pipe.stage(name).run
        for ref in ("pretrain", "tokens", "tokenizer"):
            cmd = cmd.replace("${" + ref + "}", str((run / ref).resolve()))
        if name == "sft":
            cmd += f" --seed {base + sft_seed}"
        if name == "grpo":
            cmd += f" --seed {base + rl_seed}"
        stages.append({"name": name, "run": cmd})
    return yaml.safe_dump({"name": f"demo_grpo_sft{sft_seed}_rl{rl_seed}", "stages": stages}, sort_keys=False)


def seed_list(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; argparse turns the ValueError into a one-line usage error."""
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seed offsets like 0,1,2, got {text!r}") from None
    if any(x < 0 for x in out):
        raise argparse.ArgumentTypeError(f"seed offsets are >= 0, got {text!r}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "out" / "demo", help="a finished demo run (make demo)")
    ap.add_argument("--pipeline", type=Path, default=ROOT / "pipelines" / "toy.yaml")
    ap.add_argument("--sft-seeds", type=seed_list, default=[0, 1, 2])
    ap.add_argument("--rl-seeds", type=seed_list, default=[0, 1])
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench_demo_grpo")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for need in ("pretrain", "tokens"):
        if not (args.run / need / "_manifest.json").is_file():
            print(f"{args.run / need}: not a finished stage; run `make demo` (or pass --run)", file=sys.stderr)
            return 2
    from llmctl.cli.runner import stage_effects

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    sft_seeds, rl_seeds = args.sft_seeds, args.rl_seeds
    rows = []
    print(
        f"{'sft seed':>8} {'rl seed':>7} {'sft':>6} {'grpo':>6} {'change':>7} {'se':>7} {'z':>6} {'paired':>6} {'s':>5}"
    )
    for s in sft_seeds:
        for r in rl_seeds:
            root = args.work / f"sft{s}_rl{r}"
            root.mkdir(parents=True, exist_ok=True)
            pfile = root.parent / f"sft{s}_rl{r}.yaml"
            pfile.write_text(seeded_pipeline(args.pipeline, args.run, s, r))
            t0 = time.time()
            proc = subprocess.run(
                [sys.executable, "-m", "llmctl", "run", str(pfile), "-o", str(root)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
                return proc.returncode
            eff = {(e["stage"], e["task"], e["metric"]): e for e in stage_effects(pfile, root) if e["stage"] == "grpo"}
            e = eff[("grpo", "exact_match", "exact_match")]
            z = e["change"] / e["stderr"] if e["stderr"] else float("nan")
            rows.append((s, r, e, z))
            print(
                f"{s:>8} {r:>7} {e['value_before']:>6.3f} {e['value_after']:>6.3f} {e['change']:>+7.3f} "
                f"{e['stderr']:>7.4f} {z:>+6.1f} {'yes' if e['paired'] else 'no':>6} {time.time() - t0:>5.0f}",
                flush=True,
            )
    changes = [e["change"] for _, _, e, _ in rows]
    spread = statistics.stdev(changes) if len(changes) > 1 else 0.0
    print(
        f"change: mean {statistics.mean(changes):+.3f}, sd {spread:.3f}, range {min(changes):+.3f} to "
        f"{max(changes):+.3f} over {len(rows)} runs"
    )
    miss = [(s, r) for s, r, _, z in rows if not z > 2]
    print("PASS: every run above 2 standard errors" if not miss else f"FAIL: within 2 standard errors: {miss}")
    return 1 if miss else 0


if __name__ == "__main__":
    sys.exit(main())
