"""Where `llmctl filter -o OUT` keeps the documents it removed: the dataset `OUT.rejected` beside OUT.

OUT holds the kept documents only, so every reader pointed at it (`pandas.read_parquet(OUT)`,
`pyarrow.dataset.dataset(OUT)`, duckdb's `read_parquet('OUT')` or `'OUT/**/*.parquet'`, Hugging
Face `datasets.load_dataset(OUT)`) reads exactly what the manifest counts as kept; a `rejected/`
folder inside OUT was read by all of them as more documents. `OUT.rejected` is an llmctl
dataset of its own (stage `filter.rejected`, schema `REJECTED_SCHEMA`: the document plus `reason`
and `detail`, e.g. the id of the document a duplicate repeats), so `Dataset.open` and the same
readers open it too.

Its shard `part-N.parquet` is written by the task that writes OUT's `part-N.parquet`, through the
same atomic writer, and recorded in that task's record under the role `rejected` (paths relative
to OUT.rejected), so OUT's fingerprint covers it and a resumed run keeps it. OUT.rejected's own
manifest is written just before OUT's, from those records. It belongs to OUT: when OUT is started
afresh (or overwritten), an earlier OUT.rejected is replaced; a folder of that name that llmctl
did not write is refused before anything is written.
"""

from __future__ import annotations

from typing import Any

from llmctl.data.document import REJECTED_SCHEMA
from llmctl.store import fs
from llmctl.store.dataset import ShardWriter, StageOutput, check_target

STAGE = "filter.rejected"
SUFFIX = ".rejected"


def rejected_dir(out: Any) -> Any:
    """OUT.rejected, beside OUT (a local path or a URI)."""
    p = fs.to_path(out)
    return p.parent / f"{p.name}{SUFFIX}"


def shard_writer(out: Any, name: str) -> ShardWriter:
    """The writer of task `name`'s removed documents (`OUT.rejected/NAME.parquet`)."""
    return ShardWriter(rejected_dir(out) / f"{name}.parquet", REJECTED_SCHEMA)


def shard_path(out: Any, name: str) -> Any:
    return rejected_dir(out) / f"{name}.parquet"


def check(out: Any) -> None:
    """Refuse, before OUT is touched, an OUT.rejected that is a file or a folder llmctl did not write
    (the scaffold of a killed start counts as llmctl's: it is started afresh)."""
    check_target(rejected_dir(out), STAGE, what=" (llmctl filter keeps removed documents there)")


def open_output(out: Any, cfg: Any, inputs: list[dict[str, Any]], main: StageOutput) -> StageOutput | None:
    """OUT.rejected being written alongside `main` (OUT), or None with `write_rejected` off. A run of
    OUT that starts afresh (no finished task) replaces whatever OUT.rejected held."""
    d = rejected_dir(out)
    fresh = main.resumed_tasks == 0
    if fresh and d.exists():
        fs.rmtree(d)
    if not cfg.write_rejected:
        return None
    return StageOutput(d, STAGE, cfg, inputs)


def finalize(rej: StageOutput | None, main: StageOutput, names: list[str], of: Any) -> dict[str, Any] | None:
    """Write OUT.rejected's manifest from the shards OUT's task records list; returns it."""
    if rej is None:
        return None
    if rej.complete:  # a run killed between OUT.rejected's manifest and OUT's: nothing left to write
        return rej.manifest
    reasons: dict[str, int] = {}
    for name in names:
        rec = main.task_record(name)
        rej.finish_task(name, {"data": rec["files"].get("rejected", [])})
        for k, v in rec["stats"].items():
            if k.startswith("rejected.") and k.endswith(".docs"):
                reason = k[len("rejected.") : -len(".docs")]
                reasons[reason] = reasons.get(reason, 0) + v
    return rej.finalize(names, REJECTED_SCHEMA, stats={"of": fs.display(of), "reasons": dict(sorted(reasons.items()))})
