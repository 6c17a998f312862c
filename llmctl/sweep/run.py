"""`llmctl sweep TOKENS`: train every point of the IsoFLOP grid and collect their losses in a table.

SWEEP/ holds `_sweep.json` (the config and the planned points), `points/NAME/` (one ordinary
`llmctl pretrain` run directory per point), `logs/NAME.log` (each point's pretrain output) and
`table/` (a Parquet dataset, stage "sweep": one row per point with its shape, N, D, FLOPs and
final validation loss), written when every point is done.

Resuming is pretrain's: a finished point is reported complete and skipped, a killed one
continues from its latest checkpoint (each point saves `checkpoints` times), so re-running the
same command finishes a killed sweep. Points run one after another in this process, or several
at once (`--workers N`: processes, each with cores / N torch threads), or as Ray tasks
(`--executor ray`: the sweep directory, tokens and tokenizer must be on a filesystem every node
sees). Results do not depend on how they ran: each point is seeded by the same seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from llmctl.config import from_dict, output_fields, runtime, to_dict
from llmctl.errors import UsageError
from llmctl.executor import current_executor, run_tasks
from llmctl.store.dataset import Dataset, StageOutput, atomic_write_json
from llmctl.store.lock import exclusive_output, writer_lock
from llmctl.sweep.grid import GridConfig, Point, plan_grid
from llmctl.tokenizer.spm import Tokenizer
from llmctl.train.base import open_tokens

PLAN = "_sweep.json"
TABLE = "table"
TABLE_SCHEMA = pa.schema(
    [
        ("point", pa.string()),
        ("budget", pa.float64()),
        ("flops", pa.float64()),
        ("n_layer", pa.int32()),
        ("d_model", pa.int32()),
        ("n_head", pa.int32()),
        ("params", pa.int64()),
        ("flops_per_token", pa.float64()),
        ("tokens", pa.int64()),
        ("steps", pa.int32()),
        ("batch_tokens", pa.int32()),
        ("val_loss", pa.float64()),
        ("train_loss", pa.float64()),
        ("seconds", pa.float64()),
    ]
)


@dataclass
class SweepConfig(GridConfig):
    """The grid plus how each point trains (every point the same way but for its steps)."""

    lr: float = 1e-2  # what the CPU-sized defaults need (models of 10k-300k parameters); lower it for larger ones
    warmup_fraction: float = 0.05  # of each point's steps
    min_lr_ratio: float = 0.1  # cosine to 10%, over each point's own length (as Chinchilla)
    micro_batch: int = 16
    seed: int = 1337
    # untied (unlike pretrain's default): tied, widths under ~100 learn slowly and by seed (docs/sweep.md);
    # N, F and the FLOPs are the same either way (the input embedding is a lookup)
    tie_embeddings: bool = False
    val_tokens: int = 32768
    checkpoints: int = 4  # per point: a killed point loses at most a quarter of its steps
    threads: int | None = runtime(
        None
    )  # torch threads per point (default: torch's own; cores / workers with --workers)
    device: str = runtime("cpu")
    dtype: str = runtime("auto")


def pretrain_config(p: Point, cfg: SweepConfig) -> dict[str, Any]:
    """The `llmctl pretrain` config of one point (as --config would give it)."""
    batch = p.batch_tokens // cfg.seq_len
    micro = max(m for m in range(1, min(cfg.micro_batch, batch) + 1) if batch % m == 0)
    return {
        "model": {
            "preset": "tiny",
            "n_layer": p.n_layer,
            "n_head": p.n_head,
            "d_model": p.d_model,
            "tie_embeddings": cfg.tie_embeddings,
        },
        "seq_len": cfg.seq_len,
        "batch_tokens": p.batch_tokens,
        "val_tokens": cfg.val_tokens,
        "train": {
            "steps": p.steps,
            "lr": cfg.lr,
            "min_lr_ratio": cfg.min_lr_ratio,
            "warmup_steps": max(1, round(cfg.warmup_fraction * p.steps)),
            "schedule": "cosine",
            "micro_batch": micro,
            "seed": cfg.seed,
            "eval_every": p.steps,
            "ckpt_every": max(1, p.steps // max(1, cfg.checkpoints)),
            "log_every": max(1, p.steps // 4),
            "device": cfg.device,
            "dtype": cfg.dtype,
        },
    }


def run_point(task: dict[str, Any], report: Any = None) -> dict[str, Any]:
    """Train (or resume, or find complete) one point; returns its table row. Runs in a worker too."""
    log = Path(task["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.time()
    with writer_lock(task["run"]):  # takes over (and removes on release) the lock a killed worker left
        s = _finished(task)
    if s is None:
        s = _pretrain_subprocess(task, log) if task.get("subprocess") else _pretrain_here(task, log)
    if "val_loss" not in s:
        raise UsageError(
            f"{task['run']}: no validation loss (the token dataset has no val split; tokenize with --val-fraction > 0)"
        )
    p = task["point"]
    return {
        **{k: p[k] for k in TABLE_SCHEMA.names if k in p},
        "point": p["name"],
        "val_loss": float(s["val_loss"]),
        "train_loss": float(s.get("loss", "nan")),
        "seconds": float(s.get("elapsed_s", time.time() - t)),
        "complete": bool(s.get("complete")),
    }


def _finished(task: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of a point whose run finished with this config and inputs, read from its manifest (what
    pretrain itself would report as complete, without starting a process); None for any other run dir."""
    from llmctl.train.pretrain import PretrainConfig, set_batch_size  # torch: kept out of sweep fit and report
    from llmctl.train.run_dir import MANIFEST, prepare_run_dir  # torch: likewise

    run = Path(task["run"])
    if not task.get("inputs") or not (run / MANIFEST).is_file():
        return None
    try:
        cfg = set_batch_size(from_dict(PretrainConfig, task["pretrain"]))  # the config as pretrain records it
        plan = prepare_run_dir(run, "pretrain", cfg, task["inputs"], overwrite=False)
    except UsageError:  # another config: pretrain says so in full
        return None
    return {**plan.manifest.get("stats", {}), "complete": True} if plan.status == "complete" else None


def _pretrain_here(task: dict[str, Any], log: Path) -> dict[str, Any]:
    import torch  # kept out of sweep fit and report, which read tables only

    from llmctl.train import distributed as D  # torch: likewise
    from llmctl.train.pretrain import PretrainConfig, pretrain  # torch: likewise

    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            return pretrain(task["tokens"], task["tokenizer"], task["run"], from_dict(PretrainConfig, task["pretrain"]))
        finally:
            D.shutdown()


def _pretrain_subprocess(task: dict[str, Any], log: Path) -> dict[str, Any]:
    """`llmctl pretrain TOKENS -t TOK -o RUN --config logs/NAME.yaml` in a fresh process (what --workers N runs:
    a process forked from one that already ran torch may hang in OpenMP)."""
    conf = log.with_suffix(".yaml")
    conf.write_text(yaml.safe_dump(task["pretrain"], sort_keys=False))
    env = {**os.environ, **({"OMP_NUM_THREADS": str(task["threads"])} if task.get("threads") else {})}
    cmd = [
        sys.executable,
        "-m",
        "llmctl",
        "pretrain",
        task["tokens"],
        "-t",
        task["tokenizer"],
        "-o",
        task["run"],
        "--config",
        str(conf),
    ]
    with open(log, "a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc:
        last = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        raise UsageError(f"point {task['name']}: pretrain exited with {rc}: {last[0] if last else ''} (log: {log})")
    man = json.loads((Path(task["run"]) / "_manifest.json").read_text())
    return man["stats"]


def point_task(
    p: Point,
    cfg: SweepConfig,
    tokens: str | Path,
    tokenizer: str | Path,
    root: Path,
    where: str = "points",
    threads: int | None = None,
    subprocess: bool = False,
    inputs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One point as a plain dict (for a worker process or a Ray task); `inputs`, the lineage of the tokens and the
    tokenizer, lets a finished point be reported from its manifest without starting pretrain."""
    return {
        "name": p.name,
        "point": p.to_dict(),
        "pretrain": pretrain_config(p, cfg),
        "tokens": str(Path(tokens).absolute()),
        "tokenizer": str(Path(tokenizer).absolute()),
        "run": str(root / where / p.name),
        "log": str(root / "logs" / f"{p.name}.log"),
        "threads": threads,
        "subprocess": subprocess,
        "inputs": inputs,
    }


def vocab_of(tokenizer: str | Path) -> int:
    return Tokenizer.load(tokenizer).vocab_size


@exclusive_output("output", discard_unfinished=True)
def sweep(
    tokens: str | Path, tokenizer: str | Path, output: str | Path, cfg: SweepConfig, workers: int = 1, echo: Any = print
) -> dict[str, Any]:
    """Plan the grid, train every point (resuming what a killed sweep left) and write SWEEP/table.

    Everything is checked before SWEEP is written (the grid, a val split in the tokens, a re-run
    training as the sweep did on the same tokens and tokenizer); a sweep that fails before its
    first point finished leaves no SWEEP behind."""
    root = Path(output).absolute()
    tokens, tokenizer = Path(tokens).absolute(), Path(tokenizer).absolute()  # the paths each point's pretrain records
    tok = Tokenizer.load(tokenizer)
    ds = open_tokens(tokens, tok)
    points = plan_grid(cfg, tok.vocab_size)
    check_val_split(ds)
    inputs = [ds.lineage(), tok.lineage()]
    if root.exists() and any(root.iterdir()) and not (root / PLAN).is_file():
        raise UsageError(f"{root}: directory is not empty and holds no sweep; choose another path")
    if (root / PLAN).is_file():
        check_same_training(root, cfg, inputs)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        root / PLAN,
        {
            "config": to_dict(cfg),
            "tokens": str(Path(tokens).absolute()),
            "tokenizer": str(Path(tokenizer).absolute()),
            "inputs": inputs,
            "vocab_size": tok.vocab_size,
            "points": [p.to_dict() for p in points],
        },
    )
    threads = cfg.threads or (max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None)
    local = current_executor() == "local"  # Ray tasks run in fresh worker processes already
    tasks = [
        point_task(p, cfg, tokens, tokenizer, root, threads=threads, subprocess=workers > 1 and local, inputs=inputs)
        for p in points
    ]
    echo(
        f"sweep: {len(points)} points over {len(cfg.budgets)} budgets "
        f"({sum(p.flops for p in points):.3g} FLOPs in all), {workers} at a time"
    )
    rows = []
    if workers <= 1:  # one line per point as it finishes
        for i, t in enumerate(tasks):
            rows.append(run_point(t))
            _echo_row(echo, i, len(tasks), rows[-1])
    else:
        rows = run_tasks(run_point, tasks, workers=workers, names=[t["name"] for t in tasks])
        for i, r in enumerate(rows):
            _echo_row(echo, i, len(tasks), r)
    write_table(root, cfg, rows, inputs)
    return {"points": rows, "table": str(root / TABLE)}


GRID_ONLY = ("budgets", "points", "tokens_per_param", "lo", "hi", "sizes")  # a re-run may extend the grid


def check_val_split(ds: Dataset) -> None:
    """Each point is scored by its validation loss: refuse, before training, tokens with no "val" row."""
    for batch in ds.iter_batches(columns=["split"]):
        if "val" in batch.column(0).to_pylist():
            return
    raise UsageError(
        f"{ds.path}: the token dataset has no val split, and a sweep compares points by their "
        "validation loss; tokenize with --val-fraction > 0"
    )


def check_same_training(root: Path, cfg: SweepConfig, inputs: list[dict[str, Any]] | None = None) -> None:
    """A re-run may add budgets or sizes, but must train points as the sweep did (its fit and check read
    the recorded config) on the same tokens and tokenizer (by fingerprint): otherwise a one-line error
    naming what changed, before anything is written."""
    plan = json.loads((root / PLAN).read_text())
    old = output_fields(from_dict(SweepConfig, plan["config"]))
    new = output_fields(cfg)
    changed = [k for k in new if k not in GRID_ONLY and new[k] != old.get(k)]
    recorded = {i.get("stage"): i.get("fingerprint") for i in plan.get("inputs") or []}
    for i in inputs or []:
        if i.get("stage") in recorded and recorded[i.get("stage")] != i.get("fingerprint"):
            raise UsageError(
                f"{root}: holds a sweep trained on other {i.get('stage')} ({i.get('path')} has changed or is "
                "another one); re-run it with the tokens and tokenizer it was planned with, or choose another directory"
            )
    if changed:
        was = ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in changed[:4])
        raise UsageError(
            f"{root}: holds a sweep whose points train differently ({was}); re-run it with its own "
            "settings (more budgets or sizes are fine), or choose another directory"
        )


def _echo_row(echo: Any, i: int, n: int, r: dict[str, Any]) -> None:
    state = "already complete" if r["complete"] else f"{r['seconds']:.0f} s"
    echo(f"[{i + 1}/{n}] {r['point']}: N {r['params']:,}, D {r['tokens']:,}, val loss {r['val_loss']:.4f} ({state})")


def write_table(root: Path, cfg: SweepConfig, rows: list[dict[str, Any]], inputs: list[dict[str, Any]]) -> None:
    out = StageOutput(root / TABLE, "sweep", cfg, inputs, overwrite=True)
    if out.complete:
        return
    w = out.shard_writer("part-00000.parquet", TABLE_SCHEMA)
    for r in rows:
        w.write({k: r[k] for k in TABLE_SCHEMA.names})
    out.finish_task("points", {"data": [{"path": "part-00000.parquet", **w.close()}]})
    out.finalize(["points"], TABLE_SCHEMA, stats={"points": len(rows), "budgets": sorted({r["budget"] for r in rows})})


def read_table(root: str | Path) -> list[dict[str, Any]]:
    """The rows of SWEEP/table (a one-line error when the sweep has not finished)."""
    path = Path(root) / TABLE
    if not (Path(root) / PLAN).is_file():
        raise UsageError(f"{root}: not a sweep directory (no {PLAN}); run `llmctl sweep TOKENS -o {root}` first")
    if not Dataset.is_dataset(path):
        raise UsageError(f"{root}: the sweep has not finished (no {TABLE}/); re-run the same `llmctl sweep` command")
    return list(Dataset.open(path, stage="sweep").iter_rows())
