"""The global steps of dedup in `llmctl filter`, cut the way they scale.

No step holds every document: the keys are shuffled through partitioned files, so each task reads
one partition of every shard's file (Parquet row groups pruned by their statistics), and only
`clusters` holds anything global: the documents that end up in a duplicate group.

1. `signatures` (one task per shard): per document the exact hash, the MinHash signature and its
   LSH band keys, and the C4 span hashes. Keys are written partitioned by key range into P
   partitions (`dedup.partitions`): `keys-G` holds (part, band, key, row) and `spans-G` holds
   (part, hash, row, pos), sorted, one row group per partition. Texts are read here, and later
   only for the candidate documents of `verify = jaccard`.
2. `groups` (shuffle.py, one task per key partition, all bands and the exact hash): sort the
   partition's (band, key, owner) and link each document to the first owner sharing its key. Exact
   groups give the exact edges (document -> its first copy), bands the MinHash candidate pairs.
   Both are written partitioned again, by a hash of the document into P buckets.
3. `verify` (shuffle.py, one task per bucket): candidate pairs found in several bands are
   counted once, pairs whose document is an exact duplicate are dropped (its first copy has the
   same band keys, so it carries the same pair; only a 64-bit collision of the exact hashes of two
   different texts breaks this), the rest are checked (`dedup.verify`), and a local
   union-find turns the checked pairs into a forest (node -> smallest node of its local tree).
4. `clusters` (one task, like datatrove's single clustering step, but it holds only the nodes of
   the edges, not every document): union-find over the exact edges and the forests; the kept
   document of a cluster is its first owner; every other member is removed, reason `exact` if it
   has an earlier exact copy, else `minhash`, pointing at the kept one. Writes per output shard
   the rows to remove (`dec-N`).
5. `spans` (shuffle.py, one task per hash partition): C4 span dedup among the documents
   that survive 4; the first occurrence of each span wins, later ones are written per output
   shard (one row group per output shard of `drops-P`).
6. the final write (run.py, one task per output shard).

`owner` = rank << 32 | row, where rank orders shards stably: the --against datasets first (by
path, then shard), then the inputs sorted by their resolved path or URI. So "first" means first in
a content-independent order that does not depend on the worker count, the partition count, nor
on the order in which inputs were given on the command line: the output is byte-identical for any
of them (tests/data/dedup/test_dedup_shuffle.py).

Memory per task, for the documents of its partition: `groups` holds about 50 bytes per (document,
band) (key, owner, band and the sort order), `spans` about 60 bytes per span, `verify` the texts
of its candidate documents as Arrow UTF-8 (not their shingle sets, 8x larger than even Python
strings of the texts in benchmarks/dedup.py at 16x), `clusters` about 100 bytes per document in
a duplicate group. The automatic P (one partition per 100k documents, at most 1024) keeps a task
near 100 MB for groups and 300 MB for spans (at 50 spans per document). The cost of a larger P:
each task reads the footer of every file of the step before (P files of up to P row groups), so a
few hundred partitions is the useful range.

Every step writes into OUT/_work/<step>/ through `StageOutput`, keyed by its parameters (P
included) and the fingerprints of the intermediates it reads: a re-run reuses an intermediate
whose key matches and the finished tasks of one that is half-written, and rebuilds one whose key
differs, so it can never mix the output of two runs.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from llmctl.data.dedup import base as D
from llmctl.executor import Reporter
from llmctl.store import fs
from llmctl.store.dataset import MANIFEST, RUN_STATE, StageOutput, shard_name, write_shard

DOCS_PER_PARTITION = 100_000  # automatic partition count: ceil(documents / this)
MAX_AUTO_PARTITIONS = 1024
EXACT_BAND = 0xFFFF  # the `band` value of exact-hash keys in keys-G
KEY_SCHEMA = pa.schema([("part", pa.uint32()), ("band", pa.uint16()), ("key", pa.uint64()), ("row", pa.uint32())])
SPAN_SCHEMA = pa.schema([("part", pa.uint32()), ("hash", pa.uint64()), ("row", pa.uint32()), ("pos", pa.uint32())])
DECISION_SCHEMA = pa.schema([("row", pa.uint32()), ("reason", pa.string()), ("dup_of", pa.string())])
EDGE_SCHEMA = pa.schema([("a", pa.uint64()), ("b", pa.uint64()), ("exact", pa.bool_())])


@dataclass
class WorkKey:
    """What an intermediate depends on besides its inputs (the StageOutput config)."""

    params: dict


@dataclass
class Shard:
    path: str  # Parquet file with id and text (a local path or a URI)
    rank: int  # position in the stable order
    out_index: int | None  # output shard (None: an --against shard, never written)


def work_output(path: Any, stage: str, params: dict, inputs: list[dict]) -> StageOutput:
    """An intermediate under OUT/_work: reused when its key matches, else rebuilt from scratch
    (also when a crash left it without its run record)."""
    if path.is_dir() and not (path / MANIFEST).is_file() and not (path / RUN_STATE).is_file():
        fs.rmtree(path)
    return StageOutput(path, stage, WorkKey(params), inputs, overwrite=True)


def _stage(root: Any, name: str, params: dict, inputs: list[dict]) -> StageOutput:
    return work_output(root / name, f"filter.{name}", params, inputs)


def num_partitions(cfg: D.DedupConfig, num_docs: int) -> int:
    if cfg.partitions is not None:
        return cfg.partitions
    return max(1, min(MAX_AUTO_PARTITIONS, math.ceil(num_docs / DOCS_PER_PARTITION)))


# ----------------------------------------------------------------------------- small helpers


def owners_of(rank: int, rows: np.ndarray) -> np.ndarray:
    return (np.uint64(rank) << np.uint64(32)) | rows.astype(np.uint64)


def key_part(keys: np.ndarray, parts: int) -> np.ndarray:
    """The partition of uniform 64-bit keys: key ranges of equal width."""
    return (((keys >> np.uint64(32)) * np.uint64(parts)) >> np.uint64(32)).astype(np.uint32)


def owner_bucket(owners: np.ndarray, parts: int) -> np.ndarray:
    """The bucket of a document (owners are not uniform: mixed by splitmix64's finalizer first)."""
    z = owners.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return key_part(z ^ (z >> np.uint64(31)), parts)


def component_roots(ia: np.ndarray, ib: np.ndarray, n: int) -> np.ndarray:
    """Union-find over the edges (ia[k], ib[k]) of nodes 0..n-1: each node's root, the smallest
    node of its component (nodes are numbered in the stable order, so the root is the first
    document)."""
    par = list(range(n))

    def find(x: int) -> int:
        while par[x] != x:
            par[x] = par[par[x]]
            x = par[x]
        return x

    for x, y in zip(ia.tolist(), ib.tolist()):
        rx, ry = find(x), find(y)
        if rx != ry:
            par[max(rx, ry)] = min(rx, ry)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def first_of_groups(keys: list[np.ndarray], owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by (keys..., owner); returns (order, the first owner of each element's key group)."""
    order = np.lexsort((owners, *reversed(keys)))
    n = len(order)
    new = np.zeros(n, bool)
    if n:
        new[0] = True
        for k in keys:
            s = k[order]
            new[1:] |= s[1:] != s[:-1]
    first = owners[order][np.flatnonzero(new)][np.cumsum(new) - 1]
    return order, first


def unique_rows(*cols: np.ndarray) -> np.ndarray:
    """Indices of the distinct rows of the columns, in sorted order of the columns."""
    order = np.lexsort(tuple(reversed(cols)))
    keep = np.ones(len(order), bool)
    if len(order):
        same = np.ones(len(order) - 1, bool)
        for c in cols:
            s = c[order]
            same &= s[1:] == s[:-1]
        keep[1:] = ~same
    return order[keep]


def write_partitioned(out: StageOutput, name: str, table: pa.Table, col: str) -> dict[str, Any]:
    """Write `table` (sorted by `col`) with one row group per value of `col`, so that a reader
    of one value (`fs.read_table(path, filters=[(col, "=", v)])`) reads that row group only."""
    w = out.shard_writer(name, table.schema, row_group_rows=max(1, table.num_rows))
    try:
        v = table.column(col).to_numpy()
        cuts = np.flatnonzero(np.r_[True, v[1:] != v[:-1], True]) if len(v) else np.zeros(1, np.int64)
        for s, e in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            w.write_table(table.slice(s, e - s))
    except BaseException:
        w.abort()
        raise
    return {"path": name, **w.close()}


def read_part(path: Any, col: str, value: int, columns: list[str]) -> pa.Table:
    return fs.read_table(path, columns=columns, filters=[(col, "=", value)])


def take_rows(path: Any, column: str, rows: np.ndarray) -> pa.Array:
    """Values of `column` at the sorted, distinct `rows` of a Parquet file, reading only the row
    groups that hold them."""
    pf = fs.parquet_file(path)
    md = pf.metadata
    starts = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])
    rows = np.asarray(rows, dtype=np.int64)
    rg = np.searchsorted(starts, rows, side="right") - 1
    needed = np.unique(rg)
    table = pf.read_row_groups(needed.tolist(), columns=[column])
    base = np.cumsum(np.r_[0, starts[needed + 1] - starts[needed]])[:-1]
    local = rows - starts[rg] + base[np.searchsorted(needed, rg)]
    return table.column(column).take(pa.array(local))


def _by_rank(owners: np.ndarray, paths: dict[int, Any], column: str):
    """(rank, its sorted owners, their values of `column`) for every shard rank among `owners`."""
    owners = np.unique(owners.astype(np.uint64))
    ranks = (owners >> np.uint64(32)).astype(np.int64)
    for rank in np.unique(ranks).tolist():
        sel = owners[ranks == rank]
        yield rank, sel, take_rows(paths[rank], column, (sel & np.uint64(0xFFFFFFFF)).astype(np.int64))


def values_of(owners: np.ndarray, paths: dict[int, Any], column: str) -> dict[int, Any]:
    """owner -> value of `column` in the file of its shard rank (`paths`), reading only the rows needed."""
    out: dict[int, Any] = {}
    for _, sel, vals in _by_rank(owners, paths, column):
        out.update(zip(sel.tolist(), vals.to_pylist() if column != "minhash" else list(_matrix(vals))))
    return out


class ArrowValues:
    """Like `values_of`, but the values stay in their Arrow arrays until one is asked for: texts as
    UTF-8 bytes cost about half of Python strings, and no per-object overhead."""

    def __init__(self, owners: np.ndarray, paths: dict[int, Any], column: str):
        self._parts = {rank: (sel, vals) for rank, sel, vals in _by_rank(owners, paths, column)}

    def __getitem__(self, owner: int) -> Any:
        sel, vals = self._parts[owner >> 32]
        return vals[int(np.searchsorted(sel, np.uint64(owner)))].as_py()


def _matrix(fixed_list: pa.Array) -> np.ndarray:
    arr = fixed_list.combine_chunks() if isinstance(fixed_list, pa.ChunkedArray) else fixed_list
    return arr.flatten().to_numpy().reshape(len(arr), -1)


def write_per_output_shard(
    out: StageOutput, shards: list, per_out: dict[int, list[tuple]], schema: pa.Schema, prefix: str
) -> list[dict[str, Any]]:
    """One Parquet file of sorted decision rows (columns in `schema` order) per output shard."""
    files = []
    for sh in shards:
        if sh.out_index is None:
            continue
        rows = sorted(per_out.get(sh.out_index, []))
        table = pa.table({name: [r[k] for r in rows] for k, name in enumerate(schema.names)}, schema=schema)
        files.append(write_shard(out, f"{shard_name(sh.out_index, prefix)}.parquet", table, schema))
    return files


# ----------------------------------------------------------------------------- 1. signatures


@dataclass
class SigTask:
    g: int
    shard: Shard
    out: StageOutput
    cfg: D.DedupConfig
    bands: int
    rows: int
    parts: int

    @property
    def name(self) -> str:
        return shard_name(self.g, "sig")


def signature_task(t: SigTask, report: Reporter) -> dict[str, int]:
    cfg = t.cfg
    exact, sigs, keys, spans, lines = [], [], [], [], []
    row = 0
    for batch in fs.parquet_file(t.shard.path).iter_batches(batch_size=256, columns=["text"]):
        for text in batch.column("text").to_pylist():
            norm = D.normalize_text(text)
            exact.append(D.exact_hash(norm))
            if cfg.minhash:
                sig = D.minhash(D.shingles(norm, cfg.ngram), cfg.num_perm, cfg.seed)
                sigs.append(sig)
                keys.append(D.band_keys(sig, t.bands, t.rows))
            if cfg.c4_span:
                for pos, h in enumerate(D.span_hashes(D.sentences(text), cfg.span_sentences)):
                    spans.append((h, row, pos))
            if cfg.line:
                lines += [(h, row, ln) for ln, h in D.line_hashes(text)]
            row += 1
        report(docs=batch.num_rows)
    rows = np.arange(row, dtype=np.uint32)
    ex = np.array(exact, dtype=np.uint64)
    cols: dict[str, pa.Array] = {"row": pa.array(rows), "exact": pa.array(ex)}
    if cfg.minhash:
        flat = np.array(sigs, dtype=np.uint32).reshape(-1)
        cols["minhash"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), cfg.num_perm)
    table = pa.table(cols)
    files = {"data": [write_shard(t.out, f"{t.name}.parquet", table)]}

    # keys partitioned by range: the band keys (band b) and the exact hash (band EXACT_BAND)
    k_band, k_key, k_row = [], [], []
    if cfg.minhash:
        kmat = np.array(keys, dtype=np.uint64).reshape(row, t.bands)
        for b in range(t.bands):
            k_band.append(np.full(row, b, np.uint16)), k_key.append(kmat[:, b]), k_row.append(rows)
    if cfg.exact:
        k_band.append(np.full(row, EXACT_BAND, np.uint16)), k_key.append(ex), k_row.append(rows)
    kb, kk, kr = (
        np.concatenate(x) if x else np.zeros(0, d)
        for x, d in ((k_band, np.uint16), (k_key, np.uint64), (k_row, np.uint32))
    )
    kp = key_part(kk, t.parts)
    order = np.lexsort((kr, kk, kb, kp))
    ktable = pa.table([kp[order], kb[order], kk[order], kr[order]], schema=KEY_SCHEMA)
    files["keys"] = [write_partitioned(t.out, f"{shard_name(t.g, 'keys')}.parquet", ktable, "part")]

    stable = _hash_table(spans, t.parts)
    files["spans"] = [write_partitioned(t.out, f"{shard_name(t.g, 'spans')}.parquet", stable, "part")]
    stats = {"docs": row, "spans": len(spans)}
    if cfg.line:
        files["lines"] = [
            write_partitioned(t.out, f"{shard_name(t.g, 'lines')}.parquet", _hash_table(lines, t.parts), "part")
        ]
        stats["lines"] = len(lines)
    t.out.finish_task(t.name, files, stats)
    return stats


def _hash_table(items: list[tuple[int, int, int]], parts: int) -> pa.Table:
    """(hash, row, pos) items as a SPAN_SCHEMA table: partitioned by hash range, sorted."""
    sp = np.array(items, dtype=np.uint64).reshape(-1, 3)
    h, r, pos = sp[:, 0], sp[:, 1].astype(np.uint32), sp[:, 2].astype(np.uint32)
    part = key_part(h, parts)
    order = np.lexsort((pos, r, h, part))
    return pa.table([part[order], h[order], r[order], pos[order]], schema=SPAN_SCHEMA)


# ----------------------------------------------------------------------------- 4. clusters


@dataclass
class ClusterTask:
    shards: list[Shard]
    edge_paths: list[str]  # verify's edges-Q files (none when exact and MinHash dedup are off)
    pair_stats: dict[str, int]  # candidate and verified pair counts of verify, recorded here
    out: StageOutput

    name = "clusters"


def cluster_task(t: ClusterTask, report: Reporter) -> dict[str, int]:
    """Decide which documents are exact or near duplicates; one decisions file per output shard."""
    A, B, X = [], [], []
    for p in t.edge_paths:
        e = fs.read_table(p)
        A.append(e.column("a").to_numpy()), B.append(e.column("b").to_numpy())
        X.append(e.column("exact").to_numpy(zero_copy_only=False))
    a = np.concatenate(A) if A else np.zeros(0, np.uint64)
    b = np.concatenate(B) if B else np.zeros(0, np.uint64)
    is_exact = np.concatenate(X) if X else np.zeros(0, bool)
    nodes = np.unique(np.r_[a, b])  # dense index = position in the stable order
    ia, ib = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    root = component_roots(ia, ib, len(nodes))
    exact_dup = np.zeros(len(nodes), bool)
    exact_dup[ia[is_exact]] = True  # an exact edge goes from a document to its first exact copy
    removed = np.flatnonzero(root != np.arange(len(nodes)))
    by_rank = {s.rank: s for s in t.shards}
    ids = values_of(nodes[root[removed]], {r: s.path for r, s in by_rank.items()}, "id")
    stats: Counter[str] = Counter(t.pair_stats)
    per_out: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
    for i in removed.tolist():
        o = int(nodes[i])
        sh = by_rank[o >> 32]
        if sh.out_index is not None:
            reason = "exact" if exact_dup[i] else "minhash"
            per_out[sh.out_index].append((o & 0xFFFFFFFF, reason, ids[int(nodes[root[i]])]))
            stats[f"removed.{reason}"] += 1
    stats["cluster.nodes"] = len(nodes)
    files = write_per_output_shard(t.out, t.shards, per_out, DECISION_SCHEMA, "dec")
    t.out.finish_task(t.name, {"data": files}, dict(stats))
    report(keys=len(nodes))
    return dict(stats)
