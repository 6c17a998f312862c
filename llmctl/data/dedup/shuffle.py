"""The shuffled steps of dedup (see stages.py for the whole plan): groups, verify, spans, lines.

Each task reads one partition of every shard's (or every previous task's) file through a filter
on its partition column; the files hold one row group per partition value, so Parquet prunes the
others by their statistics and a task reads about 1/P of the data, never all of it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from llmctl.data.dedup import base as D
from llmctl.data.dedup.stages import (
    EDGE_SCHEMA,
    EXACT_BAND,
    ArrowValues,
    Shard,
    component_roots,
    first_of_groups,
    owner_bucket,
    owners_of,
    read_part,
    unique_rows,
    values_of,
    write_partitioned,
)
from llmctl.executor import Reporter
from llmctl.store import fs
from llmctl.store.dataset import StageOutput, shard_name, write_shard

PAIR_SCHEMA = pa.schema([("bucket", pa.uint32()), ("exact", pa.bool_()), ("a", pa.uint64()), ("b", pa.uint64())])
DROP_SCHEMA = pa.schema([("out", pa.uint32()), ("row", pa.uint32()), ("pos", pa.uint32()), ("dup_of", pa.string())])


# ----------------------------------------------------------------------------- 2. groups


@dataclass
class GroupTask:
    part: int
    parts: int
    shards: list[Shard]
    key_paths: list[str]  # keys-G of every shard, in the order of `shards`
    out: StageOutput

    @property
    def name(self) -> str:
        return shard_name(self.part, "pairs")


def group_task(t: GroupTask, report: Reporter) -> dict[str, int]:
    """Link each document of this key partition to the first owner sharing its (band, key)."""
    bands, keys, owners = [], [], []
    for sh, path in zip(t.shards, t.key_paths):
        tbl = read_part(path, "part", t.part, ["band", "key", "row"])
        bands.append(tbl.column("band").to_numpy()), keys.append(tbl.column("key").to_numpy())
        owners.append(owners_of(sh.rank, tbl.column("row").to_numpy()))
        report(keys=tbl.num_rows)
    band = np.concatenate(bands) if bands else np.zeros(0, np.uint16)
    key = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    owner = np.concatenate(owners) if owners else np.zeros(0, np.uint64)
    order, first = first_of_groups([band, key], owner)
    a, exact = owner[order], band[order] == EXACT_BAND
    linked = a != first
    a, b, exact = a[linked], first[linked], exact[linked]
    bucket = owner_bucket(a, t.parts)
    keep = unique_rows(bucket, exact, a, b)  # a pair found in several bands of this partition once
    table = pa.table([bucket[keep], exact[keep], a[keep], b[keep]], schema=PAIR_SCHEMA)
    files = {"data": [write_partitioned(t.out, f"{t.name}.parquet", table, "bucket")]}
    stats = {"keys": len(owner), "exact_edges": int(exact.sum()), "candidate_links": int((~exact).sum())}
    t.out.finish_task(t.name, files, stats)
    return stats


# ----------------------------------------------------------------------------- 3. verify


@dataclass
class VerifyTask:
    bucket: int
    shards: list[Shard]
    pair_paths: list[str]  # every group task's pairs file
    sig_paths: list[str]  # signatures (verify = signature), in the order of `shards`
    cfg: D.DedupConfig
    out: StageOutput

    @property
    def name(self) -> str:
        return shard_name(self.bucket, "edges")


def _jaccards(lo: np.ndarray, hi: np.ndarray, shards: list[Shard], n: int) -> np.ndarray:
    """True shingle Jaccard of each pair. Holds the texts of the candidates (as Arrow UTF-8), not
    their shingle sets (8x the texts as Python strings, benchmarks/dedup.py at 16x); pairs come
    sorted by `lo`, so its set is built once per run of pairs, and a few recent sets are cached."""
    texts = ArrowValues(np.r_[lo, hi], {s.rank: s.path for s in shards}, "text")
    cache: OrderedDict[int, set[bytes]] = OrderedDict()

    def sh(o: int) -> set[bytes]:
        if o in cache:
            cache.move_to_end(o)
            return cache[o]
        s = cache[o] = D.shingles(D.normalize_text(texts[o]), n)
        if len(cache) > 8:
            cache.popitem(last=False)
        return s

    return np.array([D.jaccard(sh(x), sh(y)) for x, y in zip(lo.tolist(), hi.tolist())], dtype=np.float64)


def verify_task(t: VerifyTask, report: Reporter) -> dict[str, int]:
    """Check this bucket's candidate pairs; write its exact edges and its local forest."""
    cfg = t.cfg
    parts = [read_part(p, "bucket", t.bucket, ["exact", "a", "b"]) for p in t.pair_paths]
    exact = (
        np.concatenate([p.column("exact").to_numpy(zero_copy_only=False) for p in parts])
        if parts
        else np.zeros(0, bool)
    )
    a = np.concatenate([p.column("a").to_numpy() for p in parts]) if parts else np.zeros(0, np.uint64)
    b = np.concatenate([p.column("b").to_numpy() for p in parts]) if parts else np.zeros(0, np.uint64)
    ea, eb = a[exact], b[exact]  # document -> its first exact copy (documents of this bucket only)
    # b is the first of a band group: its exact copies share every band key, so it is its own first
    # copy; an exact duplicate a is dropped, its first copy carries the same pair (b, a)
    cand = ~exact & ~np.isin(a, ea)
    ca, cb = a[cand], b[cand]
    keep = unique_rows(cb, ca)  # sorted by (b, a): found in several bands, checked once
    lo, hi = cb[keep], ca[keep]
    stats = {"minhash.candidate_pairs": len(lo)}
    if cfg.verify != "none" and len(lo):
        if cfg.verify == "signature":
            sig = values_of(np.r_[lo, hi], {s.rank: p for s, p in zip(t.shards, t.sig_paths)}, "minhash")
            sim = np.array([np.mean(sig[x] == sig[y]) for x, y in zip(lo.tolist(), hi.tolist())])
        else:
            sim = _jaccards(lo, hi, t.shards, cfg.ngram)
        ok = sim >= cfg.threshold
        lo, hi = lo[ok], hi[ok]
    stats["minhash.verified_pairs"] = len(lo)
    report(keys=len(a))

    # local union-find: each node of a checked pair -> the smallest node of its tree
    nodes = np.unique(np.r_[lo, hi])
    root = component_roots(np.searchsorted(nodes, lo), np.searchsorted(nodes, hi), len(nodes))
    tree = root != np.arange(len(nodes))
    fa, fb = nodes[tree], nodes[root[tree]]
    table = pa.table(
        [np.r_[ea, fa], np.r_[eb, fb], np.r_[np.ones(len(ea), bool), np.zeros(len(fa), bool)]], schema=EDGE_SCHEMA
    )
    t.out.finish_task(t.name, {"data": [write_shard(t.out, f"{t.name}.parquet", table, EDGE_SCHEMA)]}, stats)
    return stats


# ----------------------------------------------------------------------------- 5. spans


@dataclass
class SpanTask:
    part: int
    shards: list[Shard]
    span_paths: list[str]  # spans-G of every shard, in the order of `shards`
    dec_paths: dict[int, str]  # out_index -> the clusters' decisions file (rows already removed)
    out: StageOutput

    @property
    def name(self) -> str:
        return shard_name(self.part, "drops")


def _surviving(t, report: Reporter) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(hash, owner, pos) of this partition's items (spans or lines) of the documents that survive
    the clusters step, sorted by (hash, owner, pos); and the number of items read."""
    H, O, P = [], [], []
    total = 0
    for sh, path in zip(t.shards, t.span_paths):
        tbl = read_part(path, "part", t.part, ["hash", "row", "pos"])
        h, r, pos = (tbl.column(c).to_numpy() for c in ("hash", "row", "pos"))
        total += len(h)
        if sh.out_index is not None:
            removed = fs.read_table(t.dec_paths[sh.out_index], columns=["row"]).column("row").to_numpy()
            if len(removed):
                mask = ~np.isin(r, removed)
                h, r, pos = h[mask], r[mask], pos[mask]
        H.append(h), O.append(owners_of(sh.rank, r)), P.append(pos)
        report(keys=tbl.num_rows)
    h = np.concatenate(H) if H else np.zeros(0, np.uint64)
    o = np.concatenate(O) if O else np.zeros(0, np.uint64)
    pos = np.concatenate(P) if P else np.zeros(0, np.uint32)
    order = np.lexsort((pos, o, h))
    return h[order], o[order], pos[order], total


def _write_drops(t, do: np.ndarray, dp: np.ndarray, df: np.ndarray) -> dict:
    """Write the dropped items (owner, pos, owner of the first copy) per output shard."""
    ids = values_of(df, {s.rank: s.path for s in t.shards}, "id")
    out_of = {s.rank: s.out_index for s in t.shards}
    rows = sorted(
        (out_of[o >> 32], o & 0xFFFFFFFF, p, ids[f])
        for o, p, f in zip(do.tolist(), dp.tolist(), df.tolist())
        if out_of[o >> 32] is not None
    )
    table = pa.table({n: [r[k] for r in rows] for k, n in enumerate(DROP_SCHEMA.names)}, schema=DROP_SCHEMA)
    return {"data": [write_partitioned(t.out, f"{t.name}.parquet", table, "out")]}


def span_task(t: SpanTask, report: Reporter) -> dict[str, int]:
    """First occurrence of each repeated span of this hash partition wins; later ones are listed."""
    hs, os_, ps, total = _surviving(t, report)
    is_first = np.r_[True, hs[1:] != hs[:-1]] if len(hs) else np.zeros(0, bool)
    first = os_[np.flatnonzero(is_first)][np.cumsum(is_first) - 1]
    later = ~is_first
    files = _write_drops(t, os_[later], ps[later], first[later])
    stats = {"spans": total, "repeated_spans_dropped": int(later.sum())}
    t.out.finish_task(t.name, files, stats)
    return stats


# ----------------------------------------------------------------------------- 6. lines


@dataclass
class LineTask:
    part: int
    shards: list[Shard]
    span_paths: list[str]  # lines-G of every shard, in the order of `shards`
    dec_paths: dict[int, str]
    max_docs: int  # a line in more documents than this is cut from all but the first
    out: StageOutput
    keep_first: bool = True  # false: cut from the first document too

    @property
    def name(self) -> str:
        return shard_name(self.part, "lines")


def line_task(t: LineTask, report: Reporter) -> dict[str, int]:
    """Lines of this hash partition found in more than `max_docs` documents: every occurrence
    outside the first document (in the stable order) is listed, or every occurrence when not
    `keep_first`."""
    hs, os_, ps, total = _surviving(t, report)
    n = len(hs)
    new_hash = np.r_[True, hs[1:] != hs[:-1]] if n else np.zeros(0, bool)
    new_doc = new_hash | (np.r_[True, os_[1:] != os_[:-1]] if n else np.zeros(0, bool))
    group = np.cumsum(new_hash) - 1
    docs_per_hash = np.bincount(group, weights=new_doc, minlength=int(new_hash.sum())) if n else np.zeros(0)
    first = os_[np.flatnonzero(new_hash)][group] if n else np.zeros(0, np.uint64)
    repeated = docs_per_hash[group] > t.max_docs if n else np.zeros(0, bool)
    drop = repeated & (os_ != first) if t.keep_first else repeated
    files = _write_drops(t, os_[drop], ps[drop], first[drop])
    stats = {
        "lines": total,
        "boilerplate_lines": int((docs_per_hash > t.max_docs).sum()),
        "line_occurrences_dropped": int(drop.sum()),
    }
    t.out.finish_task(t.name, files, stats)
    return stats
