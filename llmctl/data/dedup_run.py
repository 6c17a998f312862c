"""Dedup inside `llmctl filter`: run the intermediates of dedup_stages.py, then write OUT.

The per-shard steps have already written their kept documents to OUT/_work/docs (a dataset with
its own manifest, whose stats hold each task's funnel counts). This module runs signatures ->
bands -> clusters -> spans, each reused when its key matches, then one task per shard writes
OUT/part-N (the kept documents, with repeated C4 spans cut out) and OUT/rejected/part-N (the
per-shard rejections, then the dedup ones: reason `dedup.exact`, `dedup.minhash` or
`dedup.c4_span`, detail = the id of the kept document it duplicates).

What C4 span dedup removes: in a later occurrence of a repeated span (all but the first by the
stable order, see dedup_stages.py), the span's sentences are cut out of the document; a document
left with fewer than `span_min_sentences` (3, C4's page minimum) sentences is removed with reason
`dedup.c4_span`. Funnel bytes follow the filter's convention (the bytes of the text a decision
was made on): cutting sentences lowers `kept.bytes` and `read.bytes` by the bytes cut, counted in
`dedup.c4_span.bytes_cut`, so read == kept + rejected + unreadable still holds.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llmctl.data import dedup as D
from llmctl.data.dedup_stages import (
    BandTask,
    Shard,
    SigTask,
    _stage,
    band_task,
    cluster,
    signature_task,
    span_dedup,
)
from llmctl.data.document import DOCUMENT_SCHEMA, REJECTED_SCHEMA
from llmctl.datasets import Dataset, StageOutput
from llmctl.executor import Reporter, run_tasks
from llmctl.progress import StageProgress

_MARK = pa.schema([("row", pa.uint32())])


def dedup_shards(docs: Dataset, input_paths: list[str], against: list[str]) -> list[Shard]:
    """The shards dedup reads, --against ones first, each with its rank in the stable order."""
    shards: list[Shard] = []
    for a in sorted({os.path.realpath(p) for p in against}):
        for s in Dataset.open(a, stage="filter", columns=["id", "text"]).shards:
            shards.append(Shard(str(s), len(shards), None))
    base = len(shards)
    order = sorted(range(len(input_paths)), key=lambda i: (os.path.realpath(input_paths[i]), i))
    rank = {i: base + pos for pos, i in enumerate(order)}
    assert len(docs.shards) == len(input_paths)
    shards += [Shard(str(p), rank[i], i) for i, p in enumerate(docs.shards)]
    return shards


def _run_stage(st: StageOutput, fn, tasks: list, workers: int, progress: bool | None, label: str, total: int) -> Dataset:
    if not st.complete:
        todo = [t for t in tasks if not st.task_done(t.name)]
        with StageProgress(label, total, enabled=progress) as prog:
            run_tasks(fn, todo, workers=workers, progress=prog)
        st.finalize([t.name for t in tasks], _MARK, stats={n: st.task_record(n)["stats"] for n in [t.name for t in tasks]})
    return Dataset(st.path, st.manifest)


def run_dedup(root: Path, docs: Dataset, input_paths: list[str], cfg: Any, stage: StageOutput,
              workers: int, progress: bool | None) -> dict[str, Any]:
    """Run the dedup intermediates under root/_work, then the final per-shard write into `stage`."""
    dc: D.DedupConfig = cfg.dedup
    bands, rows = D.validate(dc)
    work = root / "_work"
    shards = dedup_shards(docs, input_paths, dc.against)
    layout = [[s.rank, s.out_index] for s in shards]
    inputs = [docs.lineage()] + [Dataset.open(a).lineage() for a in sorted({os.path.realpath(p) for p in dc.against})]
    timings: dict[str, float] = {}

    t0 = time.time()
    sig_key = {"exact": dc.exact, "minhash": dc.minhash, "c4_span": dc.c4_span, "ngram": dc.ngram,
               "num_perm": dc.num_perm, "seed": dc.seed, "bands": bands, "rows": rows,
               "span_sentences": dc.span_sentences, "layout": layout}
    sig_st = _stage(work, "signatures", sig_key, inputs)
    sig = _run_stage(sig_st, signature_task, [SigTask(g, s, sig_st, dc, bands, rows) for g, s in enumerate(shards)],
                     workers, progress, "dedup signatures", 0)
    sig_paths = [sig.path / f"sig-{g:05d}.parquet" for g in range(len(shards))]
    timings["dedup_signatures_seconds"] = round(time.time() - t0, 3)

    t0 = time.time()
    pair_paths: list[Path] = []
    band_lineage: list[dict] = []
    if dc.minhash:
        band_st = _stage(work, "bands", {"bands": bands, "layout": layout}, [sig.lineage()])
        band_ds = _run_stage(band_st, band_task, [BandTask(b, shards, sig_paths, band_st) for b in range(bands)],
                             workers, progress, "dedup bands", 0)
        pair_paths = band_ds.shards
        band_lineage = [band_ds.lineage()]
    timings["dedup_bands_seconds"] = round(time.time() - t0, 3)

    t0 = time.time()
    cl_key = {"exact": dc.exact, "minhash": dc.minhash, "verify": dc.verify, "threshold": dc.threshold,
              "ngram": dc.ngram, "layout": layout}
    cl_st = _stage(work, "clusters", cl_key, [sig.lineage(), *band_lineage])
    if not cl_st.complete:
        cluster(shards, sig_paths, pair_paths, dc, cl_st)
        cl_st.finalize(["clusters"], _MARK, stats=cl_st.task_record("clusters")["stats"])
    cl = Dataset(cl_st.path, cl_st.manifest)
    timings["dedup_clusters_seconds"] = round(time.time() - t0, 3)

    t0 = time.time()
    sp: Dataset | None = None
    if dc.c4_span:
        sp_st = _stage(work, "spans", {"span_sentences": dc.span_sentences, "layout": layout},
                       [sig.lineage(), cl.lineage()])
        if not sp_st.complete:
            span_dedup(shards, sig.path, cl.path, dc, sp_st)
            sp_st.finalize(["spans"], _MARK, stats=sp_st.task_record("spans")["stats"])
        sp = Dataset(sp_st.path, sp_st.manifest)
    timings["dedup_spans_seconds"] = round(time.time() - t0, 3)

    t0 = time.time()
    task_stats = docs.manifest["stats"]["tasks"]
    tasks = []
    for i, p in enumerate(docs.shards):
        name = f"part-{i:05d}"
        rej = docs.path / "rejected" / f"{name}.parquet"
        tasks.append(FinalTask(
            i, str(p), str(rej) if rej.is_file() else None, str(cl.path / f"dec-{i:05d}.parquet"),
            str(sp.path / f"drop-{i:05d}.parquet") if sp is not None else None, stage, task_stats[name],
            dc.span_sentences, dc.span_min_sentences, cfg.write_rejected))
    todo = [t for t in tasks if not stage.task_done(t.name)]
    with StageProgress("dedup write", 0, enabled=progress) as prog:
        run_tasks(final_task, todo, workers=workers, progress=prog)
    timings["dedup_write_seconds"] = round(time.time() - t0, 3)
    return {"timings": timings, "clusters": cl.manifest["stats"], "spans": sp.manifest["stats"] if sp else {},
            "lsh": {"bands": bands, "rows": rows, "num_perm": dc.num_perm}}


# ----------------------------------------------------------------------------- the final write


@dataclass
class FinalTask:
    index: int
    docs_path: str
    rejected_path: str | None
    dec_path: str
    drop_path: str | None
    out: StageOutput
    stats: dict[str, int]
    span_sentences: int
    span_min_sentences: int
    write_rejected: bool

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"


def _move(stats: Counter[str], nbytes: int, reason: str) -> None:
    stats["kept.docs"] -= 1
    stats["kept.bytes"] -= nbytes
    stats[f"rejected.{reason}.docs"] += 1
    stats[f"rejected.{reason}.bytes"] += nbytes


def final_task(t: FinalTask, report: Reporter) -> dict[str, int]:
    started = time.time()
    stats: Counter[str] = Counter(t.stats)
    dec = {r["row"]: (r["reason"], r["dup_of"]) for r in pq.read_table(t.dec_path).to_pylist()}
    drops: dict[int, set[int]] = defaultdict(set)
    span_dup: dict[int, str] = {}
    if t.drop_path:
        for r in pq.read_table(t.drop_path).to_pylist():
            drops[r["row"]].update(range(r["pos"], r["pos"] + t.span_sentences))
            span_dup.setdefault(r["row"], r["dup_of"])
    data_w = t.out.shard_writer(f"{t.name}.parquet", DOCUMENT_SCHEMA)
    rej_w = t.out.shard_writer(f"rejected/{t.name}.parquet", REJECTED_SCHEMA) if t.write_rejected else None
    try:
        if rej_w is not None and t.rejected_path:
            rej_w.write_table(pq.read_table(t.rejected_path))
        row = 0
        for batch in pq.ParquetFile(t.docs_path).iter_batches(batch_size=512):
            for doc in batch.to_pylist():
                nbytes = len(doc["text"].encode("utf-8"))
                reason, detail = None, None
                if row in dec:
                    reason, detail = f"dedup.{dec[row][0]}", dec[row][1]
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
        files = {"data": [{"path": f"{t.name}.parquet", **data_w.close()}]}
        if rej_w is not None:
            files["rejected"] = [{"path": f"rejected/{t.name}.parquet", **rej_w.close()}]
    except BaseException:
        data_w.abort()
        if rej_w is not None:
            rej_w.abort()
        raise
    record = {k: v for k, v in stats.items() if v}
    t.out.finish_task(t.name, files, record, seconds=round(time.time() - started, 3))
    return record
