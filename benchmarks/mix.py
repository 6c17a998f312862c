"""`llmctl mix` at scale: a 3-source mix of real data, materialized at two sizes, and pretrain on it.

Sources (one 4096-token BPE for all three): web = the shared crawl (6 WARCs) through `llmctl
filter`; stories = TinyStories (`tinystories_valid_head.txt`, blank-line paragraphs); math = GSM8K
train (question + answer), the last two via `data import --format docs`. The shared data is far
smaller than 10M tokens, so the mixture repeats it: weights web 0.5, stories 0.3, math 0.2 and
`--max-epochs 100`, each repeat a new shuffled pass.

Printed, per size (each `llmctl mix` in a fresh process, so its peak RSS is its own):
  - MB/s per core: output token bytes (4 bytes a token, the int32 ids) / wall seconds / workers;
  - peak RSS of the mix process (workers included): bounded by one source shard plus one output
    shard, so it should not grow with the total size;
then pretrain tokens/s on the materialized mix and with `--mix` (streamed from the sources),
alternated in rounds, as a ratio (median step tokens/s after the first steps; setup seconds too).

    .venv/bin/python benchmarks/mix.py [--tokens 10M --small 5M] [--workers 2] [--steps 15] [--rounds 2]
"""

from __future__ import annotations

import sys

# benchmarks/ holds scripts named like stdlib modules (tokenize.py): keep them off the import path
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

SHARED = Path(os.environ.get("LLMCTL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
LLMCTL = [sys.executable, "-m", "llmctl"]
WEIGHTS = {"web": 0.5, "stories": 0.3, "math": 0.2}

RSS_SNIPPET = """
import resource, sys, time, json
from llmctl import config as C
from llmctl.data.mix import run_mix
from llmctl.data.mix_plan import MixConfig
cfg = C.load(MixConfig, sys.argv[1], flags={"workers": int(sys.argv[3])})
t = time.perf_counter()
m = run_mix(cfg, sys.argv[2], progress=False)
secs = time.perf_counter() - t
rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"seconds": secs, "rss_mb": rss / 1024, "tokens": m["stats"]["tokens"], "shards": len(m["shards"])}))
"""


def sh(args: list[str]) -> None:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"failed: {' '.join(args)}\n{r.stderr[-2000:]}")


def prepare(work: Path, workers: int) -> dict[str, Path]:
    """The three token datasets (kept in WORK between runs: each step resumes or is already complete)."""
    w = str(workers)
    sh(LLMCTL + ["filter", *sorted(map(str, (SHARED / "crawl").glob("*.warc.gz"))), "-o", str(work / "web"), "-w", w])
    sh(
        LLMCTL
        + [
            "data",
            "import",
            str(SHARED / "tinystories" / "tinystories_valid_head.txt"),
            "-o",
            str(work / "stories"),
            "-f",
            "docs",
            "--separator",
            "blank-line",
        ]
    )
    sh(
        LLMCTL
        + [
            "data",
            "import",
            str(SHARED / "sft" / "gsm8k_train.jsonl"),
            "-o",
            str(work / "math"),
            "-f",
            "docs",
            "--text-field",
            "question,answer",
        ]
    )
    sh(
        LLMCTL
        + [
            "tokenize",
            "train",
            *(str(work / n) for n in WEIGHTS),
            "-o",
            str(work / "tok"),
            "--vocab-size",
            "4096",
            "--sample-bytes",
            "5000000",
            "-w",
            w,
        ]
    )
    for n in WEIGHTS:
        sh(
            LLMCTL
            + ["tokenize", "encode", str(work / n), "-t", str(work / "tok"), "-o", str(work / f"tokens_{n}"), "-w", w]
        )
    return {n: work / f"tokens_{n}" for n in WEIGHTS}


def mix_file(work: Path, sources: dict[str, Path], tokens: str) -> Path:
    import yaml

    f = work / f"mix_{tokens}.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "sources": {n: {"path": str(p), "weight": WEIGHTS[n]} for n, p in sources.items()},
                "tokens": tokens,
                "max_epochs": 100.0,
                "seed": 0,
            }
        )
    )
    return f


def materialize(work: Path, spec: Path, workers: int) -> dict:
    out = work / f"out_{spec.stem}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    r = subprocess.run(
        [sys.executable, "-c", RSS_SNIPPET, str(spec), str(out), str(workers)], capture_output=True, text=True
    )
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    rec["out"] = out
    rec["mb_s_core"] = rec["tokens"] * 4 / 1e6 / rec["seconds"] / workers
    return rec


def pretrain(args_in: list[str], run: Path, tok: Path, steps: int) -> tuple[float, float]:
    """(median tokens/s of the steps after the first 3, seconds before the first step)."""
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    t = time.time()
    sh(
        LLMCTL
        + [
            "pretrain",
            *args_in,
            "-t",
            str(tok),
            "-o",
            str(run),
            "--preset",
            "tiny",
            "--d-model",
            "64",
            "--n-layer",
            "2",
            "--seq-len",
            "64",
            "--batch-tokens",
            "512",
            "--steps",
            str(steps),
            "--warmup",
            "2",
            "--eval-every",
            str(10 * steps),
            "--ckpt-every",
            str(10 * steps),
            "--device",
            "cpu",
        ]
    )
    total = time.time() - t
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "tokens_per_s" in r]
    return statistics.median(r["tokens_per_s"] for r in recs[3:]), total - recs[-1]["elapsed_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="10M")
    ap.add_argument("--small", default="5M")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default="/tmp/llmctl-bench-mix")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {os.cpu_count()} cores")
    t = time.time()
    sources = prepare(work, a.workers)
    print(
        f"sources ready in {time.time() - t:.1f} s: "
        + ", ".join(
            f"{n} {json.loads((p / '_manifest.json').read_text())['stats']['train']['tokens']:,} train tokens"
            for n, p in sources.items()
        )
    )
    big = None
    for size in (a.small, a.tokens):
        rec = materialize(work, mix_file(work, sources, size), a.workers)
        print(
            f"mix {size:>5}: {rec['tokens']:,} tokens in {rec['shards']} shards, {rec['seconds']:.1f} s, "
            f"{rec['mb_s_core']:.1f} MB/s per core ({a.workers} workers), peak RSS {rec['rss_mb']:.0f} MB"
        )
        big = rec
    spec = mix_file(work, sources, a.tokens)
    plain, streamed = [], []
    for k in range(a.rounds):
        plain.append(pretrain([str(big["out"])], work / "run_plain", work / "tok", a.steps))
        streamed.append(pretrain(["--mix", str(spec)], work / "run_mix", work / "tok", a.steps))
        print(
            f"round {k + 1}: plain {plain[-1][0]:,.0f} tok/s (setup {plain[-1][1]:.1f} s), "
            f"--mix {streamed[-1][0]:,.0f} tok/s (setup {streamed[-1][1]:.1f} s)"
        )
    p, s = statistics.median(x[0] for x in plain), statistics.median(x[0] for x in streamed)
    print(f"pretrain tokens/s: plain {p:,.0f}, streamed --mix {s:,.0f}: ratio {s / p:.3f}")
    print(f"load at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
