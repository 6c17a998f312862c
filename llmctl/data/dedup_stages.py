"""The global steps of dedup in `llmctl filter`, cut the way they scale (DESIGN.md):

1. `signatures` (one task per shard, in worker processes): per document the exact hash, the
   MinHash signature and its LSH band keys, and the C4 span hashes, into Parquet. Texts are read
   here and nowhere else after this point.
2. `bands` (one task per LSH band, in workers): sort the band's (key, owner) pairs and link each
   document to the first one sharing its key: the candidate pairs.
3. `clusters` (one task): exact groups, then connected components (union-find) over the checked
   candidate pairs; the representative of a group is its first document by `owner`. Writes, per
   output shard, the rows to remove with their reason and the id of the document they duplicate.
4. `spans` (one task): C4 span dedup among the documents that survive 3; repeated span hashes are
   found by sorting, in passes over `hash % passes` so that at most 16M spans (256 MB) are held.
5. the final write (one task per shard, in workers) of OUT/part-N and OUT/rejected/part-N.

Memory: step 3 holds 8 bytes of owner + 8 of exact hash + a parent pointer per document, and the
signatures of candidate documents only; step 2 holds 16 bytes per document for one band.

`owner` = rank << 32 | row, where rank orders shards stably: the --against datasets first (by
path, then shard), then the inputs sorted by their resolved path. So "first" means first in a
content-independent order that does not depend on the worker count nor on the order in which
inputs were given on the command line.

Every step writes into OUT/_work/<step>/ through `StageOutput`, keyed by its parameters and the
fingerprints of the intermediates it reads: a re-run reuses an intermediate whose key matches,
rebuilds one whose key differs or that is missing or half-written, and so can never mix the
output of two runs.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llmctl.data import dedup as D
from llmctl.datasets import MANIFEST, RUN_STATE, StageOutput
from llmctl.executor import Reporter

MAX_SPANS_PER_PASS = 16_000_000
SPAN_SCHEMA = pa.schema([("hash", pa.uint64()), ("row", pa.uint32()), ("pos", pa.uint32())])
DECISION_SCHEMA = pa.schema([("row", pa.uint32()), ("reason", pa.string()), ("dup_of", pa.string())])
DROP_SCHEMA = pa.schema([("row", pa.uint32()), ("pos", pa.uint32()), ("dup_of", pa.string())])


@dataclass
class WorkKey:
    """What an intermediate depends on besides its inputs (the StageOutput config)."""

    params: dict


@dataclass
class Shard:
    path: str  # Parquet file with id and text
    rank: int  # position in the stable order
    out_index: int | None  # output shard (None: an --against shard, never written)


def work_output(path: Path, stage: str, params: dict, inputs: list[dict]) -> StageOutput:
    """An intermediate under OUT/_work: reused when its key matches, else rebuilt from scratch
    (also when a crash left it without its run record)."""
    if path.is_dir() and not (path / MANIFEST).is_file() and not (path / RUN_STATE).is_file():
        shutil.rmtree(path)
    return StageOutput(path, stage, WorkKey(params), inputs, overwrite=True)


def _stage(root: Path, name: str, params: dict, inputs: list[dict]) -> StageOutput:
    return work_output(root / name, f"filter.{name}", params, inputs)


def _owners(rank: int, rows: np.ndarray) -> np.ndarray:
    return (np.uint64(rank) << np.uint64(32)) | rows.astype(np.uint64)


def _first_of_groups(keys: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by (key, owner); returns (order, first owner of each element's key group, is_first)."""
    order = np.lexsort((owners, keys))
    k = keys[order]
    is_first = np.r_[True, k[1:] != k[:-1]] if len(k) else np.zeros(0, bool)
    group = np.cumsum(is_first) - 1
    first = owners[order][np.flatnonzero(is_first)][group]
    return order, first, is_first


# ----------------------------------------------------------------------------- 1. signatures


@dataclass
class SigTask:
    g: int
    shard: Shard
    out: StageOutput
    cfg: D.DedupConfig
    bands: int
    rows: int

    @property
    def name(self) -> str:
        return f"sig-{self.g:05d}"


def _write_per_output_shard(out: StageOutput, shards: list, per_out: dict[int, list[tuple]], schema: pa.Schema,
                            prefix: str) -> list[dict[str, Any]]:
    """One Parquet file of sorted decision rows (columns in `schema` order) per output shard."""
    files = []
    for sh in shards:
        if sh.out_index is None:
            continue
        rows = sorted(per_out.get(sh.out_index, []))
        table = pa.table({name: [r[k] for r in rows] for k, name in enumerate(schema.names)}, schema=schema)
        name = f"{prefix}-{sh.out_index:05d}.parquet"
        w = out.shard_writer(name, schema)
        w.write_table(table)
        files.append({"path": name, **w.close()})
    return files


def signature_task(t: SigTask, report: Reporter) -> dict[str, int]:
    cfg = t.cfg
    exact, sigs, keys, spans = [], [], [], []
    row = 0
    for batch in pq.ParquetFile(t.shard.path).iter_batches(batch_size=256, columns=["text"]):
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
            row += 1
        report(docs=batch.num_rows)
    cols: dict[str, pa.Array] = {"row": pa.array(np.arange(row, dtype=np.uint32)),
                                 "exact": pa.array(np.array(exact, dtype=np.uint64))}
    if cfg.minhash:
        kmat = np.array(keys, dtype=np.uint64).reshape(row, t.bands)
        for b in range(t.bands):
            cols[f"band_{b:03d}"] = pa.array(kmat[:, b])
        flat = np.array(sigs, dtype=np.uint32).reshape(-1)
        cols["minhash"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), cfg.num_perm)
    table = pa.table(cols)
    w = t.out.shard_writer(f"{t.name}.parquet", table.schema)
    w.write_table(table)
    files = {"data": [{"path": f"{t.name}.parquet", **w.close()}]}
    sp = np.array(spans, dtype=np.uint64).reshape(-1, 3)
    span_table = pa.table({"hash": sp[:, 0], "row": sp[:, 1].astype(np.uint32), "pos": sp[:, 2].astype(np.uint32)},
                          schema=SPAN_SCHEMA)
    w = t.out.shard_writer(f"spans-{t.g:05d}.parquet", SPAN_SCHEMA)
    w.write_table(span_table)
    files["spans"] = [{"path": f"spans-{t.g:05d}.parquet", **w.close()}]
    stats = {"docs": row, "spans": len(spans)}
    t.out.finish_task(t.name, files, stats)
    return stats


# ----------------------------------------------------------------------------- 2. bands


@dataclass
class BandTask:
    band: int
    shards: list[Shard]
    sig_paths: list[Path]
    out: StageOutput

    @property
    def name(self) -> str:
        return f"band-{self.band:03d}"


def band_task(t: BandTask, report: Reporter) -> int:
    col = f"band_{t.band:03d}"
    keys, owners = [], []
    for sh, path in zip(t.shards, t.sig_paths):
        tbl = pq.read_table(path, columns=["row", col])
        keys.append(tbl.column(col).to_numpy())
        owners.append(_owners(sh.rank, tbl.column("row").to_numpy()))
    k = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    o = np.concatenate(owners) if owners else np.zeros(0, np.uint64)
    order, first, _ = _first_of_groups(k, o)
    o = o[order]
    linked = o != first
    table = pa.table({"a": o[linked], "b": first[linked]})
    w = t.out.shard_writer(f"{t.name}.parquet", table.schema)
    w.write_table(table)
    t.out.finish_task(t.name, {"data": [{"path": f"{t.name}.parquet", **w.close()}]}, {"pairs": int(linked.sum())})
    report(docs=len(o))
    return int(linked.sum())


# ----------------------------------------------------------------------------- 3. clusters


def _resolve_ids(owners: np.ndarray, shards: list[Shard]) -> dict[int, str]:
    """The document id of each owner, reading only the id column of the shards involved."""
    by_rank = {s.rank: s for s in shards}
    need: dict[int, list[int]] = defaultdict(list)
    for o in np.unique(owners).tolist():
        need[o >> 32].append(o & 0xFFFFFFFF)
    ids: dict[int, str] = {}
    for rank, rows in need.items():
        col = pq.read_table(by_rank[rank].path, columns=["id"]).column("id")
        for r, v in zip(rows, col.take(pa.array(rows)).to_pylist()):
            ids[(rank << 32) | r] = v
    return ids


def _signatures_of(owners: np.ndarray, shards: list[Shard], sig_paths: list[Path], num_perm: int) -> dict[int, np.ndarray]:
    wanted = set(owners.tolist())
    out: dict[int, np.ndarray] = {}
    for sh, path in zip(shards, sig_paths):
        rows = [o & 0xFFFFFFFF for o in wanted if o >> 32 == sh.rank]
        if rows:
            col = pq.read_table(path, columns=["minhash"]).column("minhash").combine_chunks()
            mat = col.flatten().to_numpy().reshape(-1, num_perm)
            for r in rows:
                out[(sh.rank << 32) | r] = mat[r]
    return out


def _shingles_of(owners: np.ndarray, shards: list[Shard], n: int) -> dict[int, set[bytes]]:
    wanted = set(owners.tolist())
    out: dict[int, set[bytes]] = {}
    for sh in shards:
        rows = [o & 0xFFFFFFFF for o in wanted if o >> 32 == sh.rank]
        if rows:
            texts = pq.read_table(sh.path, columns=["text"]).column("text").take(pa.array(rows)).to_pylist()
            for r, text in zip(rows, texts):
                out[(sh.rank << 32) | r] = D.shingles(D.normalize_text(text), n)
    return out


def cluster(shards: list[Shard], sig_paths: list[Path], pair_paths: list[Path], cfg: D.DedupConfig,
            out: StageOutput) -> dict[str, int]:
    """Decide which documents are exact or near duplicates; one decisions file per output shard."""
    owners, exact = [], []
    for sh, path in zip(shards, sig_paths):
        tbl = pq.read_table(path, columns=["row", "exact"])
        owners.append(_owners(sh.rank, tbl.column("row").to_numpy()))
        exact.append(tbl.column("exact").to_numpy())
    O = np.concatenate(owners)
    E = np.concatenate(exact)
    order = np.argsort(O, kind="stable")
    O, E = O[order], E[order]  # dense index i is the i-th document in the stable order
    n = len(O)
    idx = np.arange(n)
    reason = np.zeros(n, np.int8)  # 0 kept, 1 exact, 2 minhash
    if cfg.exact:
        o2, first, _ = _first_of_groups(E, idx.astype(np.uint64))
        exact_rep = np.empty(n, np.int64)
        exact_rep[o2] = first.astype(np.int64)
        reason[exact_rep != idx] = 1
    else:
        exact_rep = idx.copy()
    parent = exact_rep.copy()
    stats: Counter[str] = Counter()
    if cfg.minhash and pair_paths:
        pairs = [pq.read_table(p) for p in pair_paths]
        a = np.searchsorted(O, np.concatenate([p.column("a").to_numpy() for p in pairs]))
        b = np.searchsorted(O, np.concatenate([p.column("b").to_numpy() for p in pairs]))
        a, b = exact_rep[a], exact_rep[b]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        keep = lo != hi
        uniq = np.unique(lo[keep] * n + hi[keep]) if keep.any() else np.zeros(0, np.int64)
        lo, hi = uniq // n, uniq % n
        stats["minhash.candidate_pairs"] = len(lo)
        if cfg.verify != "none" and len(lo):
            involved = O[np.unique(np.r_[lo, hi])]
            if cfg.verify == "signature":
                sig = _signatures_of(involved, shards, sig_paths, cfg.num_perm)
                sim = np.array([np.mean(sig[int(O[x])] == sig[int(O[y])]) for x, y in zip(lo, hi)])
            else:
                sh_sets = _shingles_of(involved, shards, cfg.ngram)
                sim = np.array([D.jaccard(sh_sets[int(O[x])], sh_sets[int(O[y])]) for x, y in zip(lo, hi)])
            ok = sim >= cfg.threshold
            lo, hi = lo[ok], hi[ok]
        stats["minhash.verified_pairs"] = len(lo)
        par = parent.tolist()

        def find(x: int) -> int:
            while par[x] != x:
                par[x] = par[par[x]]
                x = par[x]
            return x

        for x, y in zip(lo.tolist(), hi.tolist()):
            rx, ry = find(x), find(y)
            if rx != ry:
                par[max(rx, ry)] = min(rx, ry)  # the root is the first document of its component
        parent = np.array([find(i) for i in range(n)], dtype=np.int64)
        reason[(reason == 0) & (parent != idx)] = 2
    final_rep = parent[exact_rep]  # an exact duplicate points at the kept document of its cluster
    removed = np.flatnonzero(reason > 0)
    ids = _resolve_ids(O[final_rep[removed]], shards)
    names = {1: "exact", 2: "minhash"}
    by_rank = {s.rank: s for s in shards}
    per_out: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
    for i in removed.tolist():
        sh = by_rank[int(O[i]) >> 32]
        if sh.out_index is not None:
            per_out[sh.out_index].append((int(O[i]) & 0xFFFFFFFF, names[int(reason[i])], ids[int(O[final_rep[i]])]))
            stats[f"removed.{names[int(reason[i])]}"] += 1
    files = _write_per_output_shard(out, shards, per_out, DECISION_SCHEMA, "dec")
    out.finish_task("clusters", {"data": files}, dict(stats))
    return dict(stats)


# ----------------------------------------------------------------------------- 4. spans


def span_dedup(shards: list[Shard], sig_out: Path, dec_out: Path, cfg: D.DedupConfig, out: StageOutput) -> dict[str, int]:
    """First occurrence of each repeated span wins; later ones are listed per output shard."""
    removed: dict[int, set[int]] = {}
    for sh in shards:
        if sh.out_index is not None:
            removed[sh.rank] = set(pq.read_table(dec_out / f"dec-{sh.out_index:05d}.parquet",
                                                 columns=["row"]).column("row").to_pylist())
    paths = {sh.rank: sig_out / f"spans-{g:05d}.parquet" for g, sh in enumerate(shards)}
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in paths.values())
    passes = max(1, math.ceil(total / MAX_SPANS_PER_PASS))
    drops_o, drops_pos, drops_first = [], [], []
    for p in range(passes):
        H, O, P = [], [], []
        for sh in shards:
            t = pq.read_table(paths[sh.rank])
            h, r, pos = (t.column(c).to_numpy() for c in ("hash", "row", "pos"))
            mask = (h % np.uint64(passes)) == np.uint64(p)
            if removed.get(sh.rank):
                mask &= ~np.isin(r, np.fromiter(removed[sh.rank], np.uint32))
            H.append(h[mask]), O.append(_owners(sh.rank, r[mask])), P.append(pos[mask])
        h, o, pos = np.concatenate(H), np.concatenate(O), np.concatenate(P)
        order = np.lexsort((pos, o, h))
        hs, os_, ps = h[order], o[order], pos[order]
        is_first = np.r_[True, hs[1:] != hs[:-1]] if len(hs) else np.zeros(0, bool)
        first = os_[np.flatnonzero(is_first)][np.cumsum(is_first) - 1]
        later = ~is_first
        drops_o.append(os_[later]), drops_pos.append(ps[later]), drops_first.append(first[later])
    do, dp, df = np.concatenate(drops_o), np.concatenate(drops_pos), np.concatenate(drops_first)
    ids = _resolve_ids(df, shards)
    by_rank = {s.rank: s for s in shards}
    per_out: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
    for o, pos, f in zip(do.tolist(), dp.tolist(), df.tolist()):
        sh = by_rank[o >> 32]
        if sh.out_index is not None:
            per_out[sh.out_index].append((o & 0xFFFFFFFF, pos, ids[f]))
    files = _write_per_output_shard(out, shards, per_out, DROP_SCHEMA, "drop")
    stats = {"spans": total, "passes": passes, "repeated_spans_dropped": len(do)}
    out.finish_task("spans", {"data": files}, stats)
    return stats
