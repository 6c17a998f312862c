"""Dedup inside `llmctl filter`: run the intermediates of stages.py, then write OUT.

The per-shard steps have already written their kept documents to OUT/_work/docs (a dataset with
its own manifest, whose stats hold each task's funnel counts). This module runs signatures ->
groups -> verify -> clusters -> spans, every step as tasks through `run_tasks` (local worker
processes or Ray), each reused when its key matches, then one task per shard writes
OUT/part-N (the kept documents, with repeated C4 spans cut out) and OUT.rejected/part-N (the
per-shard rejections, then the dedup ones: reason `dedup.exact`, `dedup.minhash` or
`dedup.c4_span`, detail = the id of the kept document it duplicates).

What C4 span dedup removes: in a later occurrence of a repeated span (all but the first by the
stable order, see stages.py), the span's sentences are cut out of the document; a document
left with fewer than `span_min_sentences` (3, C4's page minimum) sentences is removed with reason
`dedup.c4_span`. Funnel bytes follow the filter's convention (the bytes of the text a decision
was made on): cutting sentences lowers `kept.bytes` and `read.bytes` by the bytes cut, counted in
`dedup.c4_span.bytes_cut`, so read == kept + rejected + unreadable still holds.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa

from llmctl.data import rejected as R
from llmctl.data.dedup import base as D
from llmctl.data.dedup.shuffle import (
    GroupTask,
    LineTask,
    SpanTask,
    VerifyTask,
    group_task,
    line_task,
    span_task,
    verify_task,
)
from llmctl.data.dedup.stages import (
    ClusterTask,
    Shard,
    SigTask,
    _stage,
    cluster_task,
    num_partitions,
    signature_task,
)
from llmctl.data.document import DOCUMENT_SCHEMA
from llmctl.data.steps.gopher import word_count
from llmctl.executor import Reporter, run_tasks
from llmctl.store import fs
from llmctl.store.dataset import Dataset, StageOutput, abort_shards, close_shards, shard_name
from llmctl.utils.progress import StageProgress

_MARK = pa.schema([("row", pa.uint32())])


def dedup_shards(docs: Dataset, input_paths: list[str], against: list[str]) -> list[Shard]:
    """The shards dedup reads, --against ones first, each with its rank in the stable order."""
    shards: list[Shard] = []
    for a in sorted({fs.display(p) for p in against}):
        for s in Dataset.open(a, stage="filter", columns=["id", "text"]).shards:
            shards.append(Shard(str(s), len(shards), None))
    base = len(shards)
    order = sorted(range(len(input_paths)), key=lambda i: (fs.display(input_paths[i]), i))
    rank = {i: base + pos for pos, i in enumerate(order)}
    assert len(docs.shards) == len(input_paths)
    shards += [Shard(str(p), rank[i], i) for i, p in enumerate(docs.shards)]
    return shards


def _counting_tasks(fn, task, report: Reporter):
    """`fn(task, report)`, then one finished task on the progress bar."""
    result = fn(task, report)
    report(tasks=1)
    return result


def _run_stage(
    st: StageOutput, fn, tasks: list, workers: int, progress: bool | None, label: str, total_docs: int | None = None
) -> Dataset:
    """Run the tasks of an intermediate that are not done yet, then write its manifest; the stats
    of each task are kept under their task name. The bar counts documents when `total_docs` is
    given (the tasks report them), else finished tasks."""
    if not st.complete:
        todo = [t for t in tasks if not st.task_done(t.name)]
        unit, total = ("docs", total_docs) if total_docs is not None else ("tasks", len(todo))
        with StageProgress(label, total, enabled=progress, unit=unit) as prog:
            run_tasks(partial(_counting_tasks, fn), todo, workers=workers, progress=prog)
        names = [t.name for t in tasks]
        st.finalize(names, _MARK, stats={n: st.task_record(n)["stats"] for n in names})
    return Dataset(st.path, st.manifest)


def _sum_stats(ds: Dataset) -> Counter[str]:
    total: Counter[str] = Counter()
    for s in ds.manifest["stats"].values():
        total.update(s)
    return total


def run_dedup(
    root: Any, docs: Dataset, input_paths: list[str], cfg: Any, stage: StageOutput, workers: int, progress: bool | None
) -> dict[str, Any]:
    """Run the dedup intermediates under root/_work, then the final per-shard write into `stage`."""
    dc: D.DedupConfig = cfg.dedup
    bands, rows = D.validate(dc)
    work = root / "_work"
    shards = dedup_shards(docs, input_paths, dc.against)
    against = sorted({fs.display(p) for p in dc.against})
    ds_against = [Dataset.open(a) for a in against]
    parts = num_partitions(dc, docs.num_rows + sum(d.num_rows for d in ds_against))
    layout = [[s.rank, s.out_index] for s in shards]
    inputs = [docs.lineage()] + [d.lineage() for d in ds_against]
    timings: dict[str, float] = {}

    def timed(name: str, t0: float) -> None:
        timings[f"dedup_{name}_seconds"] = round(time.time() - t0, 3)

    t0 = time.time()
    sig_key = {
        "exact": dc.exact,
        "minhash": dc.minhash,
        "c4_span": dc.c4_span,
        "line": dc.line,
        "ngram": dc.ngram,
        "num_perm": dc.num_perm,
        "seed": dc.seed,
        "bands": bands,
        "rows": rows,
        "span_sentences": dc.span_sentences,
        "layout": layout,
        "partitions": parts,
    }
    sig_st = _stage(work, "signatures", sig_key, inputs)
    sig = _run_stage(
        sig_st,
        signature_task,
        [SigTask(g, s, sig_st, dc, bands, rows, parts) for g, s in enumerate(shards)],
        workers,
        progress,
        "dedup signatures",
        total_docs=sum(ds.num_rows for ds in [docs, *ds_against]),
    )
    sig_paths = [str(sig.path / f"{shard_name(g, 'sig')}.parquet") for g in range(len(shards))]
    timed("signatures", t0)

    t0 = time.time()
    edge_paths: list[str] = []
    pair_stats: dict[str, int] = {}
    cl_inputs = [sig.lineage()]
    if dc.exact or dc.minhash:
        key_paths = [str(sig.path / f"{shard_name(g, 'keys')}.parquet") for g in range(len(shards))]
        gr_st = _stage(work, "groups", {"partitions": parts, "layout": layout}, [sig.lineage()])
        gr = _run_stage(
            gr_st,
            group_task,
            [GroupTask(p, parts, shards, key_paths, gr_st) for p in range(parts)],
            workers,
            progress,
            "dedup groups",
        )
        timed("groups", t0)

        t0 = time.time()
        ve_key = {
            "minhash": dc.minhash,
            "verify": dc.verify,
            "threshold": dc.threshold,
            "ngram": dc.ngram,
            "partitions": parts,
            "layout": layout,
        }
        ve_st = _stage(work, "verify", ve_key, [gr.lineage(), sig.lineage()])
        pair_paths = [str(p) for p in gr.shards]
        ve = _run_stage(
            ve_st,
            verify_task,
            [VerifyTask(q, shards, pair_paths, sig_paths, dc, ve_st) for q in range(parts)],
            workers,
            progress,
            "dedup verify",
        )
        edge_paths = [str(p) for p in ve.shards]
        if dc.minhash:
            pair_stats = {k: v for k, v in _sum_stats(ve).items() if k.startswith("minhash.")}
        cl_inputs = [ve.lineage()]
        timed("verify", t0)

    t0 = time.time()
    cl_key = {"exact": dc.exact, "minhash": dc.minhash, "partitions": parts, "layout": layout}
    cl_st = _stage(work, "clusters", cl_key, cl_inputs)
    if not cl_st.complete:
        with StageProgress("dedup clusters", 1, enabled=progress, unit="tasks") as prog:
            run_tasks(
                partial(_counting_tasks, cluster_task),
                [ClusterTask(shards, edge_paths, pair_stats, cl_st)],
                workers=1,
                progress=prog,
            )
        cl_st.finalize(["clusters"], _MARK, stats=cl_st.task_record("clusters")["stats"])
    cl = Dataset(cl_st.path, cl_st.manifest)
    timed("clusters", t0)

    t0 = time.time()
    sp: Dataset | None = None
    dec_paths = {
        s.out_index: str(cl.path / f"{shard_name(s.out_index, 'dec')}.parquet")
        for s in shards
        if s.out_index is not None
    }
    if dc.c4_span:
        span_paths = [str(sig.path / f"{shard_name(g, 'spans')}.parquet") for g in range(len(shards))]
        sp_st = _stage(
            work,
            "spans",
            {"span_sentences": dc.span_sentences, "partitions": parts, "layout": layout},
            [sig.lineage(), cl.lineage()],
        )
        sp = _run_stage(
            sp_st,
            span_task,
            [SpanTask(p, shards, span_paths, dec_paths, sp_st) for p in range(parts)],
            workers,
            progress,
            "dedup spans",
        )
    timed("spans", t0)

    t0 = time.time()
    lp: Dataset | None = None
    if dc.line:
        line_paths = [str(sig.path / f"{shard_name(g, 'lines')}.parquet") for g in range(len(shards))]
        ln_st = _stage(
            work,
            "lines",
            {
                "line_max_docs": dc.line_max_docs,
                "keep_first": dc.line_keep_first,
                "partitions": parts,
                "layout": layout,
            },
            [sig.lineage(), cl.lineage()],
        )
        lp = _run_stage(
            ln_st,
            line_task,
            [
                LineTask(p, shards, line_paths, dec_paths, dc.line_max_docs, ln_st, dc.line_keep_first)
                for p in range(parts)
            ],
            workers,
            progress,
            "dedup lines",
        )
        timed("lines", t0)

    t0 = time.time()
    task_stats = docs.manifest["stats"]["tasks"]
    tasks = []
    for i, p in enumerate(docs.shards):
        name = shard_name(i)
        rej = R.shard_path(docs.path, name)
        tasks.append(
            FinalTask(
                i,
                str(p),
                str(rej) if rej.is_file() else None,
                str(cl.path / f"{shard_name(i, 'dec')}.parquet"),
                [str(x) for x in sp.shards] if sp is not None else [],
                stage,
                task_stats[name],
                dc.span_sentences,
                dc.span_min_sentences,
                cfg.write_rejected,
                [str(x) for x in lp.shards] if lp is not None else [],
                _min_words(cfg),
            )
        )
    todo = [t for t in tasks if not stage.task_done(t.name)]
    with StageProgress("dedup write", docs.num_rows, enabled=progress, unit="docs") as prog:
        run_tasks(final_task, todo, workers=workers, progress=prog)
    timed("write", t0)
    spans = dict(_sum_stats(sp)) if sp is not None else {}
    lines = {"lines": dict(_sum_stats(lp))} if lp is not None else {}
    return {
        "timings": timings,
        "clusters": cl.manifest["stats"],
        "spans": spans,
        **lines,
        "lsh": {"bands": bands, "rows": rows, "num_perm": dc.num_perm},
        "partitions": parts,
    }


# ----------------------------------------------------------------------------- the final write


@dataclass
class FinalTask:
    index: int
    docs_path: str
    rejected_path: str | None
    dec_path: str
    drop_paths: list[str]  # the span tasks' drops files (each: one row group per output shard)
    out: StageOutput
    stats: dict[str, int]
    span_sentences: int
    span_min_sentences: int
    write_rejected: bool
    line_drop_paths: list[str]  # the line tasks' drops files (pos = line number)
    min_words: int  # the length rule a document cut by line dedup must still pass (Gopher's minimum)

    @property
    def name(self) -> str:
        return shard_name(self.index)


def _min_words(cfg: Any) -> int:
    """Gopher's minimum word count when that rule runs in this filter, else 0."""
    gq = cfg.gopher_quality
    return gq.min_doc_words if gq.enabled and "gopher_quality" in cfg.steps else 0


def _drops(paths: list[str], index: int, width: int) -> tuple[dict[int, set[int]], dict[int, str]]:
    """row -> positions to drop (each drop covers `width` positions), row -> id of the first copy."""
    drops: dict[int, set[int]] = defaultdict(set)
    dup: dict[int, str] = {}
    found = [fs.read_table(p, columns=["row", "pos", "dup_of"], filters=[("out", "=", index)]) for p in paths]
    for r in sorted((r["row"], r["pos"], r["dup_of"]) for f in found for r in f.to_pylist()):
        drops[r[0]].update(range(r[1], r[1] + width))
        dup.setdefault(r[0], r[2])  # the first item (by position) that the row repeats
    return drops, dup


def _move(stats: Counter[str], nbytes: int, reason: str) -> None:
    stats["kept.docs"] -= 1
    stats["kept.bytes"] -= nbytes
    stats[f"rejected.{reason}.docs"] += 1
    stats[f"rejected.{reason}.bytes"] += nbytes


def final_task(t: FinalTask, report: Reporter) -> dict[str, int]:
    started = time.time()
    stats: Counter[str] = Counter(t.stats)
    dec = {r["row"]: (r["reason"], r["dup_of"]) for r in fs.read_table(t.dec_path).to_pylist()}
    drops, span_dup = _drops(t.drop_paths, t.index, t.span_sentences)
    line_drops, line_dup = _drops(t.line_drop_paths, t.index, 1)
    data_w = t.out.shard_writer(f"{t.name}.parquet", DOCUMENT_SCHEMA)
    rej_w = R.shard_writer(t.out.path, t.name) if t.write_rejected else None
    try:
        if rej_w is not None and t.rejected_path:
            rej_w.write_table(fs.read_table(t.rejected_path))
        row = 0
        for batch in fs.parquet_file(t.docs_path).iter_batches(batch_size=512):
            for doc in batch.to_pylist():
                nbytes = len(doc["text"].encode("utf-8"))
                reason, detail = None, None
                if row in dec:
                    reason, detail = f"dedup.{dec[row][0]}", dec[row][1]
                elif row in line_drops:
                    reason, detail = _cut_lines(doc, drops.get(row, set()), line_drops[row], t, stats)
                    detail = detail or (line_dup[row] if reason == "dedup.line" else span_dup.get(row))
                elif row in drops:
                    text, left = D.drop_sentences(doc["text"], drops[row])
                    if left < t.span_min_sentences or not text.strip():
                        reason, detail = "dedup.c4_span", span_dup[row]
                    else:
                        cut = nbytes - len(text.encode("utf-8"))
                        stats["kept.bytes"] -= cut
                        stats["read.bytes"] -= cut
                        stats["dedup.c4_span.bytes_cut"] += cut
                        stats["dedup.c4_span.sentences_cut"] += len(drops[row])
                        stats["dedup.c4_span.docs_edited"] += 1
                        doc["text"] = text
                if reason is None:
                    data_w.write(doc)
                else:
                    _move(stats, nbytes, reason)
                    if rej_w is not None:
                        rej_w.write({**doc, "reason": reason, "detail": detail})
                row += 1
            report(docs=batch.num_rows)
    except BaseException:
        abort_shards(data_w, rej_w)
        raise
    files = close_shards(f"{t.name}.parquet", data=data_w, rejected=rej_w)  # rejected: in OUT.rejected
    record = {k: v for k, v in stats.items() if v}
    t.out.finish_task(t.name, files, record, seconds=round(time.time() - started, 3))
    return record


def _cut_lines(
    doc: dict, span_drop: set[int], lines: set[int], t: FinalTask, stats: Counter[str]
) -> tuple[str | None, str | None]:
    """Cut boilerplate lines (and repeated spans) out of `doc`; (reason, detail) when it is left
    too short for the length rules, else (None, None) with doc["text"] edited and the bytes counted."""
    text = doc["text"]
    if span_drop:
        new, left = D.drop_sentences(text, span_drop, lines)
        if left < t.span_min_sentences:
            return "dedup.c4_span", None
    else:
        new = D.drop_lines(text, lines)
    if not new.strip() or word_count(new) < t.min_words:
        return "dedup.line", None
    cut = len(text.encode("utf-8")) - len(new.encode("utf-8"))
    stats["kept.bytes"] -= cut
    stats["read.bytes"] -= cut
    stats["dedup.line.bytes_cut"] += cut
    stats["dedup.line.lines_cut"] += len(lines)
    stats["dedup.line.docs_edited"] += 1
    if span_drop:
        stats["dedup.c4_span.docs_edited"] += 1
    doc["text"] = new
    return None, None
