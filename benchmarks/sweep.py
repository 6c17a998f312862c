"""Scaling-law sweep on TinyStories, CPU: an IsoFLOP grid, both Chinchilla fits, and a checked prediction.

TinyStories (the 0.8 MB head in ../shared/data/tinystories, 4,300 paragraphs) is tokenized with
llmctl's BPE (512 tokens; every 20th paragraph held out), then the same three commands a user runs:

    llmctl sweep TOKENS -t TOK -o SWEEP --budgets 1e11,3e11,1e12 --sizes 1x16,1x24,1x32,1x48,1x64,1x96 \
        --lr 1e-2 --batch-tokens 512 --untie-embeddings --seed 1337 --threads 1 --workers 2
    llmctl sweep fit SWEEP            # predicts the best shape and its loss at 3e12 (3x the largest)
    llmctl sweep check SWEEP          # trains it: predicted vs actual validation loss

It prints the wall time of each step, the fitted exponents beside Chinchilla's, and the prediction's
error (target: within 3%). With --every-shape, as a diagnostic outside the sweep and its fit, it also
trains those shapes at the check's budget and prints approach 3's prediction for each against its
trained loss (is the predicted shape the best one, and where does the law hold). Everything is
resumable: re-running the script continues where a killed run stopped (WORKDIR keeps the tokens, the
sweep and the check).

    .venv/bin/python benchmarks/sweep.py [--workdir /tmp/llmctl-sweep-bench] [--seed 1] [--every-shape 1x48,1x64,1x96,1x128]
"""

from __future__ import annotations

import sys

# benchmarks/ holds scripts named like stdlib modules (tokenize.py): keep them off the import path
sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith("benchmarks")]

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import pyarrow as pa

SHARED_DATA = Path(
    os.environ.get("LLMCTL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)  # ../shared/data beside the checkout
TINYSTORIES = SHARED_DATA / "tinystories/tinystories_valid_head.txt"
SCHEMA = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int32())), ("split", pa.string())])


class _Cfg:
    __dataclass_fields__: dict = {}


def prepare(work: Path, vocab: int) -> tuple[Path, Path]:
    """TOK (llmctl BPE) and TOKENS (a tokens dataset, 5% val) from the TinyStories head, once."""
    from llmctl.store.dataset import Dataset, StageOutput
    from llmctl.tokenizer.spm import Tokenizer

    tok_dir, tokens = work / "tok", work / "tokens"
    if Dataset.is_dataset(tokens):
        return tok_dir, tokens
    docs = [p.strip() for p in TINYSTORIES.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    Tokenizer.train(docs, vocab).save(tok_dir)
    tok = Tokenizer.load(tok_dir)
    out = StageOutput(tokens, "tokens", _Cfg(), inputs=[tok.lineage()])
    w = out.shard_writer("part-00000.parquet", SCHEMA)
    for i, text in enumerate(docs):
        w.write(
            {"id": f"ts{i}", "input_ids": tok.encode(text) + [tok.eos_id], "split": "val" if i % 20 == 0 else "train"}
        )
    out.finish_task("part-00000", {"data": [{"path": "part-00000.parquet", **w.close()}]})
    out.finalize(["part-00000"], SCHEMA)
    return tok_dir, tokens


def llmctl(*args: str) -> float:
    t = time.time()
    print("$ llmctl " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "llmctl", *args], check=True)
    return time.time() - t


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/llmctl-sweep-bench")
    ap.add_argument("--budgets", default="1e11,3e11,1e12")
    ap.add_argument("--sizes", default="1x16,1x24,1x32,1x48,1x64,1x96", help="shapes at every budget ('' = the ladder)")
    ap.add_argument("--points", default="6", help="with --sizes '': ladder shapes per budget")
    ap.add_argument("--tokens-per-param", default="10", help="with --sizes '': where the ladder's grid is centred")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--lr", default="1e-2", help="peak learning rate of every point (models of 10k-100k parameters)")
    ap.add_argument(
        "--batch-tokens", default="512", help="tokens per step (4 windows of 128): 250-20,000 steps a point"
    )
    ap.add_argument(
        "--embeddings",
        choices=["tied", "untied"],
        default="untied",
        help="untied: a separate input embedding (same N and F); tied ones start slowly, by seed, at these widths",
    )
    ap.add_argument("--seed", default="1337", help="seed of every point (init and data order) and of the check")
    ap.add_argument("--workers", default="2")
    ap.add_argument(
        "--every-shape",
        default="",
        help="also train these shapes at the check's budget, each against the law ('' = skip)",
    )
    ap.add_argument(
        "--threads", default="1", help="torch threads per point (1: these models are too small to gain from more)"
    )
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {load()} ({os.cpu_count()} cores)")
    tok, tokens = prepare(work, a.vocab)
    sweep = work / "sweep"
    emb = ["--untie-embeddings" if a.embeddings == "untied" else "--tie-embeddings", "--seed", a.seed]
    grid = ["--sizes", a.sizes] if a.sizes else ["--points", a.points, "--tokens-per-param", a.tokens_per_param]
    t_sweep = llmctl(
        "sweep",
        str(tokens),
        "-t",
        str(tok),
        "-o",
        str(sweep),
        "--budgets",
        a.budgets,
        *grid,
        "--lr",
        a.lr,
        "--batch-tokens",
        a.batch_tokens,
        "--workers",
        a.workers,
        "--threads",
        a.threads,
        *emb,
    )
    t_fit = llmctl("sweep", "fit", str(sweep))
    t_check = llmctl("sweep", "check", str(sweep))
    fit, check = json.loads((sweep / "fit.json").read_text()), json.loads((sweep / "check.json").read_text())
    from llmctl.sweep.run import read_table

    rows = read_table(sweep)
    train_s = sum(r["seconds"] for r in rows)
    a2, a3 = fit["approach2"], fit["approach3"]
    print()
    print(
        f"points: {len(rows)} over {len(fit['budgets'])} budgets; sweep wall {t_sweep:.0f} s this invocation "
        f"(training time of the points as recorded: {train_s:.0f} s), fit {t_fit:.0f} s, check {t_check:.0f} s"
    )
    print(
        f"approach 2: a = {a2['a']:.3f} {a2['ci']['a']}, b = {a2['b']:.3f} {a2['ci']['b']}   (Chinchilla: a 0.49-0.50, b 0.50-0.51)"
    )
    print(
        f"approach 3: E {a3['E']:.3f}, A {a3['A']:.4g}, B {a3['B']:.4g}, alpha {a3['alpha']:.3f}, beta {a3['beta']:.3f}; "
        f"implied a {a3['allocation']['a']:.3f}, b {a3['allocation']['b']:.3f}   (Chinchilla: 1.69, 406.4, 410.7, 0.34, 0.28)"
    )
    for b in a2["budgets"]:
        print(
            f"  C {b['budget']:.3g}: N_opt {b['n_opt']:,.0f}, D_opt {b['d_opt']:,.0f}, {b['d_opt'] / b['n_opt']:.1f} tokens/param"
            + ("" if b["bracketed"] else " (extrapolated)")
        )
    p = check["point"]
    err = check["relative_error"]
    print(
        f"check at C {check['budget']:.3g} ({p['n_layer']}x{p['d_model']}, N {p['params']:,}, D {p['tokens']:,}): "
        f"predicted {check['predicted']:.4f}, actual {check['actual']:.4f}, error {100 * err:+.2f}% "
        f"({'within' if abs(err) <= 0.03 else 'NOT within'} 3%); approach 2's L_opt {check['predicted_approach2']:.4f}"
    )
    if a.every_shape:
        # every shape at the check's budget too, each against the law fitted on the sweep (not part of the fit)
        grid3 = work / "sweep_3x"
        t_3x = llmctl(
            "sweep",
            str(tokens),
            "-t",
            str(tok),
            "-o",
            str(grid3),
            "--budgets",
            f"{check['budget']:g}",
            "--sizes",
            a.every_shape,
            "--lr",
            a.lr,
            "--batch-tokens",
            a.batch_tokens,
            "--workers",
            a.workers,
            "--threads",
            a.threads,
            *emb,
        )
        from llmctl.sweep.law import law_loss

        print(
            f"every shape at C {check['budget']:.3g} ({t_3x:.0f} s), approach 3's law from the sweep against the trained loss:"
        )
        for r in sorted(read_table(grid3), key=lambda r: r["params"]):
            pr = law_loss(a3, r["params"], r["tokens"])
            e = pr / r["val_loss"] - 1
            print(
                f"  {r['n_layer']}x{r['d_model']:<3} N {r['params']:>7,} D {r['tokens']:>10,}: predicted {pr:.4f}, "
                f"trained {r['val_loss']:.4f}, error {100 * e:+.2f}%"
                + ("  <- the check's shape" if r["d_model"] == p["d_model"] and r["n_layer"] == p["n_layer"] else "")
            )
    print(f"sweep + fit + check: {t_sweep + t_fit + t_check:.0f} s wall")
    print(f"load average at end: {load()}")


if __name__ == "__main__":
    main()
