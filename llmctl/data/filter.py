"""`llmctl filter`: crawl files in, clean documents out, with a funnel that adds up.

One task per input file (or input shard): read its records, run the configured steps on each
document in order, write the kept documents to `part-NNNNN.parquet` and the removed ones, with
the rule that removed them, to `OUT.rejected/part-NNNNN.parquet` (a dataset beside OUT, see
llmctl.data.rejected, so that readers of OUT see kept documents only). Output shard N depends only on
input file N and the config, so the output is the same for any worker count, and a killed run
resumes task by task (llmctl.store.dataset).

Accounting, per task and in total: every record read is kept, rejected (with its reason) or
unreadable (with its reason), so `read == kept + rejected + unreadable` in documents and bytes
(bytes: UTF-8 text bytes for documents, raw bytes for unreadable records).

With dedup on (the default), dedup needs a global view, so the per-shard steps (extraction, C4,
Gopher, PII, the fastText quality score) write their kept documents to the intermediate dataset
OUT/_work/docs instead, and llmctl.data.dedup.run then writes OUT/part-N from it (exact, C4-span
and MinHash dedup; see docs/dedup.md). OUT/_work is removed once the manifest is written
(`dedup.keep_work` keeps it). The quality step runs per shard, before dedup.

The url step, when on, runs as each record is read, before its page is extracted. OUT/_stats.json
(written before the manifest) has per-step statistics: for each step its documents in and out,
the seconds spent in it (summed over tasks and workers) and, per drop reason, documents and bytes;
see `step_stats`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass, replace
from pathlib import Path
from typing import Any

from llmctl.config import output_fields, runtime
from llmctl.data import rejected as R
from llmctl.data import steps as S
from llmctl.data.dedup.base import DedupConfig
from llmctl.data.dedup.base import validate as validate_dedup
from llmctl.data.dedup.run import run_dedup
from llmctl.data.dedup.stages import work_output
from llmctl.data.document import DETAIL_KEY, DOCUMENT_SCHEMA, Document, to_row
from llmctl.data.extract import ENCODING_KEY, ExtractConfig, Rejected, Unreadable, read_input
from llmctl.data.inputs import InputFile, resolve_inputs  # noqa: F401 - resolve_inputs is imported from here too
from llmctl.data.steps.decont import summary as decont_summary
from llmctl.executor import Reporter, default_workers, run_tasks, using
from llmctl.store import fs
from llmctl.store.dataset import Dataset, StageOutput, abort_shards, close_shards, shard_name
from llmctl.store.integrity import verify_shard
from llmctl.store.lock import exclusive_output
from llmctl.utils.progress import StageProgress, note, note_resume

STEP_NAMES = S.STEP_NAMES

# Options of `llmctl filter` (YAML/TOML sections mirror these fields): one section per registered
# step (llmctl.data.steps.STEPS, in its order) between `extract` and `dedup`.
FilterConfig = make_dataclass(
    "FilterConfig",
    [
        ("steps", list[str], field(default_factory=lambda: list(S.STEP_NAMES))),  # order in which steps run
        ("extract", ExtractConfig, field(default_factory=ExtractConfig)),
        *[(s.name, s.config, field(default_factory=s.config)) for s in S.STEPS],
        ("dedup", DedupConfig, field(default_factory=DedupConfig)),  # runs after the per-shard steps
        ("write_rejected", bool, True),  # keep removed documents, with their reason, in the dataset OUT.rejected
        ("workers", int | None, runtime(None)),  # worker processes; None = all cores
        ("executor", str, runtime("local")),  # local processes, or ray (llmctl.executor.ray)
        ("ray_address", str, runtime("auto")),  # with executor ray: auto, ray://host:port; no cluster = a local one
    ],
    namespace={"__module__": __name__, "__doc__": "Options of `llmctl filter` (one section per step)."},
)


def build_steps(cfg: FilterConfig) -> list:
    """The enabled steps of `cfg.steps` in order (quality last when it has a model and is not listed)."""
    names = list(cfg.steps) + (["quality"] if cfg.quality.enabled and "quality" not in cfg.steps else [])
    return S.build(names, lambda name: getattr(cfg, name))


# ----------------------------------------------------------------------------- one task


@dataclass
class FilterTask:
    index: int
    input: InputFile
    out: StageOutput
    cfg: FilterConfig

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def label(self) -> str:
        """How a failure names this task: the shard and the input file it reads."""
        return f"{self.name} ({self.input.source or self.input.path})"


def _url_check(step: Any, stats: Counter[str]) -> Callable[[Document], str | None]:
    """The url step as a check before extraction, counting its documents and time."""

    def check(doc: Document) -> str | None:
        t0 = time.perf_counter_ns()
        reason = step(doc, stats)
        stats["step.url.docs_in"] += 1
        stats["step.url.ns"] += time.perf_counter_ns() - t0
        return reason

    return check


def filter_task(task: FilterTask, report: Reporter) -> dict[str, Any]:
    """Filter one input file into one output shard (+ its rejected shard); returns its stats."""
    started = time.time()
    cfg = task.cfg
    steps = build_steps(cfg)
    stats: Counter[str] = Counter()
    url = next((s for s in steps if s.name == "url"), None)  # runs before extraction
    timed = [
        (s, f"step.{_REASON_STEP[s.name]}.docs_in", f"step.{_REASON_STEP[s.name]}.ns") for s in steps if s is not url
    ]
    data_w = task.out.shard_writer(f"{task.name}.parquet", DOCUMENT_SCHEMA)
    rej_w = R.shard_writer(task.out.path, task.name) if cfg.write_rejected else None
    try:
        verify_shard(task.input.path, task.input.sha256)
        check = _url_check(url, stats) if url is not None else None
        records = read_input(task.input.path, task.input.source or task.input.path, cfg.extract, report, check)
        while True:
            t0 = time.perf_counter_ns()
            rec = next(records, None)
            stats["step.extract.ns"] += time.perf_counter_ns() - t0
            if rec is None:
                break
            report(docs=1)
            if isinstance(rec, Unreadable):
                _count(stats, f"unreadable.{rec.reason}", rec.nbytes)
                continue
            if isinstance(rec, Rejected):
                _count_encoding(stats, rec.doc)
                _reject(stats, rej_w, rec.doc, rec.reason, rec.detail)
                continue
            _count_encoding(stats, rec)
            stats["step.extract.docs_out"] += 1
            reason = _run_steps(timed, rec, stats)
            if reason is None:
                _count(stats, "kept", len(rec.text.encode("utf-8")))
                data_w.write(to_row(rec))
            else:
                _reject(stats, rej_w, rec, reason, rec.meta.pop(DETAIL_KEY, None))
    except BaseException:
        abort_shards(data_w, rej_w)
        raise
    files = close_shards(f"{task.name}.parquet", data=data_w, rejected=rej_w)  # rejected: in OUT.rejected
    record = dict(stats)
    task.out.finish_task(task.name, files, record, seconds=round(time.time() - started, 3))
    return record


def _count_encoding(stats: Counter[str], doc: Document) -> None:
    how = doc.meta.pop(ENCODING_KEY, None)  # WARC pages only: how their charset was decided
    if how is not None:
        stats[f"extract.encoding.{how}"] += 1


def _run_steps(timed: list[tuple[Any, str, str]], doc: Document, stats: Counter[str]) -> str | None:
    for step, docs_in, ns in timed:
        t0 = time.perf_counter_ns()
        reason = step(doc, stats)
        stats[ns] += time.perf_counter_ns() - t0
        stats[docs_in] += 1
        if reason is not None:
            return reason
    return None


def _count(stats: Counter[str], key: str, nbytes: int) -> None:
    stats[f"{key}.docs"] += 1
    stats[f"{key}.bytes"] += nbytes
    stats["read.docs"] += 1
    stats["read.bytes"] += nbytes


def _reject(stats: Counter[str], writer, doc: Document, reason: str, detail: str | None) -> None:
    _count(stats, f"rejected.{reason}", len(doc.text.encode("utf-8")))
    if writer is not None:
        writer.write({**to_row(doc), "reason": reason, "detail": detail})


# ----------------------------------------------------------------------------- the stage


_REASON_STEP = {s.reason: s.name for s in S.STEPS}  # "gopher_rep" -> "gopher_repetition"


def funnel(stats: dict[str, int], step_order: list[str]) -> list[dict[str, Any]]:
    """Rows of the funnel table: read, then each cause of removal, then kept."""
    causes = sorted({k.rsplit(".", 1)[0] for k in stats if k.startswith(("rejected.", "unreadable."))})

    def rank(c: str) -> tuple:
        kind, _, reason = c.partition(".")
        family = reason.split(".")[0]
        order = _REASON_STEP.get(family, family)
        pos = step_order.index(order) if order in step_order else (-1 if family == "extract" else len(step_order))
        return (0 if kind == "unreadable" else 1, pos, reason)

    rows = [{"row": "read", "docs": stats.get("read.docs", 0), "bytes": stats.get("read.bytes", 0)}]
    for c in sorted(causes, key=rank):
        rows.append({"row": c, "docs": stats.get(f"{c}.docs", 0), "bytes": stats.get(f"{c}.bytes", 0)})
    rows.append({"row": "kept", "docs": stats.get("kept.docs", 0), "bytes": stats.get("kept.bytes", 0)})
    return rows


def _absolute(v: Any) -> Any:
    """A config path (or list of paths) with its local paths made absolute."""
    if isinstance(v, (list, tuple)):
        return [_absolute(x) for x in v]
    return os.path.abspath(v) if isinstance(v, str) and fs.is_local(v) else v


STATS_FILE = "_stats.json"


def step_stats(stats: dict[str, int], cfg: Any, dedup_seconds: float | None) -> dict[str, Any]:
    """OUT/_stats.json: the funnel per step, from the merged task counters.

    `steps` lists, in the order they ran, `extract` (input: every record read), the url step
    (when on; it runs on records as they are read, so extract's input excludes what it drops),
    each per-document step, and `dedup` (when on). Each has `docs_in`, `docs_out`, `seconds` and
    `reasons` ({reason: {docs, bytes}}), and `docs_in - docs_out` is the sum of its reasons' docs;
    every funnel row but read and kept is the reason of exactly one step.
    """
    reasons: dict[str, dict[str, dict[str, int]]] = {}
    for k, v in stats.items():
        if not k.startswith(("rejected.", "unreadable.")) or not k.endswith((".docs", ".bytes")):
            continue
        cause, _, unit = k.rpartition(".")
        kind, _, reason = cause.partition(".")
        family = reason.split(".")[0]
        step = "extract" if kind == "unreadable" or family == "extract" else _REASON_STEP.get(family, family)
        reasons.setdefault(step, {}).setdefault(cause, {"docs": 0, "bytes": 0})[unit] = v

    def dropped(step: str) -> int:
        return sum(r["docs"] for r in reasons.get(step, {}).values())

    def row(step: str, docs_in: int, ns: int) -> dict[str, Any]:
        return {
            "step": step,
            "docs_in": docs_in,
            "docs_out": docs_in - dropped(step),
            "seconds": round(ns / 1e9, 6),
            "reasons": dict(sorted(reasons.get(step, {}).items())),
        }

    rows = []
    if "step.url.docs_in" in stats or "url" in reasons:
        rows.append(row("url", stats.get("step.url.docs_in", 0), stats.get("step.url.ns", 0)))
    read = stats.get("read.docs", 0)
    rows.append(row("extract", read - dropped("url"), stats.get("step.extract.ns", 0) - stats.get("step.url.ns", 0)))
    ran = [n for n in S.STEP_NAMES if f"step.{n}.docs_in" in stats and n != "url"]
    order = list(cfg.steps) + ["quality"]
    for name in sorted(ran, key=lambda n: order.index(n) if n in order else len(order)):
        rows.append(row(name, stats[f"step.{name}.docs_in"], stats.get(f"step.{name}.ns", 0)))
    if dedup_seconds is not None:
        docs_in = stats.get("kept.docs", 0) + dropped("dedup")
        rows.append(row("dedup", docs_in, int(dedup_seconds * 1e9)))
    return {
        "read": {"docs": read, "bytes": stats.get("read.bytes", 0)},
        "kept": {"docs": stats.get("kept.docs", 0), "bytes": stats.get("kept.bytes", 0)},
        "steps": rows,
    }


def _run_per_shard(
    files: list[InputFile], out: StageOutput, cfg: FilterConfig, workers: int, progress: bool | None
) -> list[str]:
    for spec in S.STEPS:  # workers may run in another directory: the files steps read, made absolute
        section = getattr(cfg, spec.name)
        local = {k: _absolute(v) for k in spec.paths if (v := getattr(section, k))}
        if section.enabled and local:
            cfg = replace(cfg, **{spec.name: replace(section, **local)})
    tasks = [FilterTask(i, f, out, cfg) for i, f in enumerate(files)]
    todo = [t for t in tasks if not out.task_done(t.name)]
    note_resume(out, len(tasks), progress)
    total = sum(fs.size(t.input.path) for t in todo)
    with StageProgress("filter", total, enabled=progress) as prog:
        run_tasks(filter_task, todo, workers=workers, progress=prog)
    return [t.name for t in tasks]


@exclusive_output(lambda a: [a["out"], R.rejected_dir(a["out"])], discard_unfinished=True)
def run_filter(
    inputs: list[str],
    out: str | Path,
    cfg: FilterConfig | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run the filter stage; returns the output manifest (also when it was already complete).

    Every phase (per-shard steps, dedup signatures, groups, verify, clusters, spans, final write) runs its tasks
    on the executor of `cfg.executor`: the same functions locally or on Ray, the same output.
    """
    cfg = cfg or FilterConfig()
    with using(cfg.executor, cfg.ray_address, workers=cfg.workers or default_workers()):
        return _run_filter(inputs, out, cfg, overwrite, progress)


def _run_filter(
    inputs: list[str],
    output: str | Path,
    cfg: FilterConfig,
    overwrite: bool,
    progress: bool | None,
) -> dict[str, Any]:
    for step in build_steps(cfg):  # validate step names and load the quality model before touching the output
        for message in getattr(step, "notices", ()):
            note(message, progress)
    dedup_on = cfg.dedup.enabled
    if dedup_on:
        validate_dedup(cfg.dedup)
    files = resolve_inputs(inputs, cfg.extract)
    lineage: list[dict[str, Any]] = []
    for f in files:
        if f.lineage not in lineage:
            lineage.append(f.lineage)
    for spec in S.STEPS:  # the files the steps that are on read (a quality model, eval sets)
        if spec.lineage is not None and getattr(cfg, spec.name).enabled:
            rec = spec.lineage(getattr(cfg, spec.name))
            lineage += rec if isinstance(rec, list) else [rec]
    if dedup_on:
        lineage += [Dataset.open(a, stage="filter", columns=["id", "text"]).lineage() for a in cfg.dedup.against]
    out = fs.to_path(output)
    workers = cfg.workers or default_workers()
    fs.check_shared(out, workers, cfg.executor)
    R.check(out)
    stage = StageOutput(out, "filter", cfg, lineage, overwrite=overwrite)
    if stage.complete:
        note(f"{output}: already complete (same config and inputs); nothing to do", progress)
        if not cfg.dedup.keep_work:
            fs.rmtree(out / "_work")
        return stage.manifest
    rejected = R.open_output(out, cfg, lineage, stage)
    started = time.time()
    extra: dict[str, Any] = {}
    if not dedup_on:
        names = _run_per_shard(files, stage, cfg, workers, progress)
    else:
        key = {k: v for k, v in output_fields(cfg).items() if k != "dedup"}
        docs_st = work_output(out / "_work" / "docs", "filter.docs", key, lineage)
        if not docs_st.complete:
            names = _run_per_shard(files, docs_st, cfg, workers, progress)
            docs_st.finalize(
                names, DOCUMENT_SCHEMA, stats={"tasks": {n: docs_st.task_record(n)["stats"] for n in names}}
            )
        docs = Dataset(docs_st.path, docs_st.manifest)  # type: ignore[arg-type]
        extra = run_dedup(out, docs, [f.path for f in files], cfg, stage, workers, progress)
        names = [shard_name(i) for i in range(len(files))]
    stats: Counter[str] = Counter()
    for name in names:
        stats.update(stage.task_record(name)["stats"])
    accounted = stats["kept.docs"] + sum(
        v for k, v in stats.items() if k.startswith(("rejected.", "unreadable.")) and k.endswith(".docs")
    )
    assert accounted == stats["read.docs"], "funnel does not add up"
    counters = {
        k: v
        for k, v in sorted(stats.items())
        if not k.startswith(("read.", "kept.", "rejected.", "unreadable.", "step."))
    }
    summary = {
        "funnel": funnel(dict(stats), list(cfg.steps) + ["quality", "dedup"]),
        "counters": counters,
        "documents_read": stats["read.docs"],
        "documents_kept": stats["kept.docs"],
        "input_files": len(files),
    }
    if extra:
        summary["dedup"] = {k: v for k, v in extra.items() if k != "timings"}
    if cfg.decontaminate.enabled:
        summary["decontaminate"] = decont_summary(cfg.decontaminate)
    dedup_seconds = sum(v for k, v in extra.get("timings", {}).items() if isinstance(v, (int, float)))
    fs.atomic_write_json(out / STATS_FILE, step_stats(dict(stats), cfg, dedup_seconds if dedup_on else None))
    if stats["read.docs"] and not stats["kept.docs"]:
        top = max(
            (
                (k[len("rejected.") : -len(".docs")], v)
                for k, v in stats.items()
                if k.startswith("rejected.") and k.endswith(".docs")
            ),
            key=lambda kv: kv[1],
            default=None,
        )
        why = f"; most were removed by {top[0]} ({top[1]:,})" if top else ""
        note(f"{output}: no document was kept of {stats['read.docs']:,} read{why}", progress)
    rej = R.finalize(rejected, stage, names, out)
    if rej is not None:
        summary["rejected"] = {"dataset": R.rejected_dir(out).name, "documents": rej["num_rows"]}
    manifest = stage.finalize(
        names,
        DOCUMENT_SCHEMA,
        stats=summary,
        timings={"run_seconds": round(time.time() - started, 3), "workers": workers, **extra.get("timings", {})},
    )
    if dedup_on and not cfg.dedup.keep_work:
        fs.rmtree(out / "_work")
    return manifest
