"""`llmctl mix`: write a mixture of token datasets as one ordinary token dataset.

The plan (llmctl.data.mix_plan) fixes every document and its place; this module only copies
them. The output stream (train documents, then every source's val documents) is cut into shards
of about `shard_tokens` tokens; one task writes one shard, reading from each source shard only
the Parquet row groups that hold its documents. Shards are the data contract's: temporary name,
then renamed; a task record after its shard; the manifest last. A killed run re-run with the same
command redoes the unfinished shards and ends with the same bytes; a different table refuses.

Columns: `id` (the source document's id: a repeated document keeps its id), `input_ids`, `split`
and `source` (the source's name in the table), so `eval` can score one source's val documents.

Cost: a shard task reads the row groups its documents fall in. Documents are drawn from whole
sources at random, so each task touches most row groups of every source: reading grows with
(output shards x source size). benchmarks/mix.py measures it (docs/mix.md has the figures).
Memory: one source shard's row groups and one output shard at a time, whatever the total size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmctl.data.mix_plan import MixConfig, Plan, make_plan, open_sources
from llmctl.data.tokenize import TOKENS_SCHEMA
from llmctl.errors import UsageError
from llmctl.executor import Reporter, default_workers, run_tasks
from llmctl.store import fs
from llmctl.store.dataset import StageOutput, shard_name, write_shard
from llmctl.store.integrity import open_parquet, verify_shard
from llmctl.store.lock import exclusive_output
from llmctl.utils.progress import StageProgress, note, note_resume

MIX_SCHEMA = TOKENS_SCHEMA.append(pa.field("source", pa.string(), nullable=False))


@dataclass
class MixTask:
    index: int
    out: StageOutput
    files: list[list[tuple[str, str | None]]]  # per source, per shard: (path, sha256)
    names: list[str]
    src: np.ndarray
    shard: np.ndarray
    row: np.ndarray
    n_train: int  # the first n_train documents are train, the rest val

    @property
    def name(self) -> str:
        return shard_name(self.index)


def _take(path: str, sha: str | None, rows: np.ndarray) -> pa.Table:
    """Rows `rows` (in that order) of one Parquet shard, reading only the row groups that hold them."""
    verify_shard(path, sha)
    pf = open_parquet(path)
    md = pf.metadata
    starts = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
    rg_of = np.searchsorted(starts, rows, side="right") - 1
    groups = np.unique(rg_of)
    t = pf.read_row_groups(groups.tolist(), columns=["id", "input_ids"])
    base = np.concatenate([[0], np.cumsum(starts[groups + 1] - starts[groups])])
    local = base[np.searchsorted(groups, rg_of)] + rows - starts[rg_of]
    return t.take(pa.array(local))


def mix_task(task: MixTask, report: Reporter) -> dict[str, Any]:
    started = time.time()
    key = task.src.astype(np.int64) << 32 | task.shard.astype(np.int64)
    pieces, where = [], []
    for k in np.unique(key):
        at = np.flatnonzero(key == k)
        s, sh = int(k >> 32), int(k & 0xFFFFFFFF)
        pieces.append(_take(*task.files[s][sh], task.row[at]))
        where.append(at)
    table = pa.concat_tables(pieces).take(pa.array(np.argsort(np.concatenate(where), kind="stable")))
    n = table.num_rows
    split = np.array(["train"] * task.n_train + ["val"] * (n - task.n_train), dtype=object)
    table = pa.table(
        {
            "id": table.column("id").cast(pa.string()),
            "input_ids": table.column("input_ids"),
            "split": pa.array(split, pa.string()),
            "source": pa.array(np.asarray(task.names, dtype=object)[task.src], pa.string()),
        },
        schema=MIX_SCHEMA,
    )
    rec = write_shard(task.out, f"{task.name}.parquet", table, MIX_SCHEMA)
    report(docs=n, tokens=int(pc.sum(pc.list_value_length(table.column("input_ids"))).as_py() or 0))
    task.out.finish_task(
        task.name,
        {"data": [rec]},
        {"documents": n},
        seconds=round(time.time() - started, 3),
    )
    return {"documents": n}


def shard_bounds(lengths: np.ndarray, shard_tokens: int) -> list[tuple[int, int]]:
    """Document ranges of the output shards: a shard starts at the first document past each multiple of shard_tokens."""
    if len(lengths) == 0:
        return []
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cut = np.flatnonzero(np.diff(start // max(1, shard_tokens)) > 0) + 1
    edges = [0, *cut.tolist(), len(lengths)]
    return list(zip(edges[:-1], edges[1:]))


def summary(plan: Plan) -> dict[str, Any]:
    sp = {s: {"documents": len(plan.length[s]), "tokens": plan.tokens(s)} for s in ("train", "val")}
    return {
        "mix": {
            "sources": plan.table,
            "tokens": plan.tokens("train"),
            "budget": plan.budget,
            "plan_fingerprint": plan.fingerprint,
        },
        **sp,
        "documents": sp["train"]["documents"] + sp["val"]["documents"],
        "tokens": sp["train"]["tokens"] + sp["val"]["tokens"],
    }


@exclusive_output("out", discard_unfinished=True)
def run_mix(cfg: MixConfig, out: str | Path, overwrite: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Materialize the mixture `cfg` into the token dataset `out`; returns its manifest."""
    if cfg.shard_tokens < 1:
        raise UsageError(f"--shard-tokens must be positive, got {cfg.shard_tokens}")
    notices: list[str] = []
    sources = open_sources(cfg, notices.append)
    plan = make_plan(cfg, sources, notices.append)  # every check runs before anything is written
    inputs = [s.ds.lineage() for s in sources] + [sources[0].tokenizer]
    stage = StageOutput(fs.to_path(out), "tokens", cfg, inputs, overwrite=overwrite)
    for n in notices:
        note(n, progress)
    if stage.complete:
        note(f"{out}: already complete (same mixture and sources); nothing to do", progress)
        return stage.manifest
    files = [[(str(p), r.get("sha256")) for p, r in zip(s.ds.shards, s.ds.shard_records)] for s in sources]
    names = [s.name for s in sources]
    cat = {
        k: np.concatenate([getattr(plan, k)["train"], getattr(plan, k)["val"]])
        for k in ("src", "shard", "row", "length")
    }
    n_train = len(plan.length["train"])
    tasks = [
        MixTask(
            i, stage, files, names, cat["src"][a:b], cat["shard"][a:b], cat["row"][a:b], max(0, min(b, n_train) - a)
        )
        for i, (a, b) in enumerate(shard_bounds(cat["length"], cfg.shard_tokens))
    ]
    todo = [t for t in tasks if not stage.task_done(t.name)]
    note_resume(stage, len(tasks), progress)
    workers = cfg.workers or default_workers()
    started = time.time()
    with StageProgress("mix", sum(len(t.src) for t in todo) or None, enabled=progress, unit="docs") as prog:
        run_tasks(mix_task, todo, workers=max(1, min(workers, len(todo))), progress=prog)
    return stage.finalize(
        [t.name for t in tasks],
        MIX_SCHEMA,
        stats=summary(plan),
        timings={"run_seconds": round(time.time() - started, 3), "workers": workers},
    )
