"""`llmctl tokenize`: train the BPE tokenizer on a sample of documents, and encode documents to tokens.

Training reads a sample, not the corpus: `sample_bytes` of text drawn evenly across all input
shards (each shard gets an equal share, a shard with less text gives its unused share to the
others; inside a shard documents are taken in a seeded random order). sentencepiece holds the
whole sample in memory: the training process peaked at 353 MB for a 10 MB sample and a 32k
vocabulary (interpreter and imports included), PEERS.md has 220 MB for 20 MB at 8k, so a few
hundred MB of sample is the practical ceiling on a laptop.

Encoding writes the token dataset: one row per document, `input_ids` ending with
`<|eos|>`, and `split` = "val" for the documents whose id hashes (xxh64, seeded) below
`val_fraction`, so the split is the same whatever the shard layout or worker count and a
document never moves between splits when more data is added. Shards map 1:1 to input shards;
when there are fewer shards than workers, each shard's batch is encoded with several
sentencepiece threads instead, so the throughput still scales.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from llmctl.config import output_fields, runtime, to_dict
from llmctl.errors import UsageError
from llmctl.executor import Reporter, default_workers, run_tasks, using
from llmctl.store import fs
from llmctl.store.dataset import (
    MANIFEST,
    Dataset,
    StageOutput,
    abort_shards,
    canonical_json,
    close_shards,
    sha256_text,
    shard_name,
)
from llmctl.store.integrity import open_parquet, read_state, verify_shard
from llmctl.store.lock import exclusive_output
from llmctl.store.manifest import write_manifest
from llmctl.tokenizer.load import load_tokenizer
from llmctl.tokenizer.spm import Tokenizer, training_chunks
from llmctl.utils.progress import StageProgress, note, note_resume

TOKENS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)
SPLITS = ("train", "val")


# ============================================================================ training


@dataclass
class TokenizerTrainConfig:
    """Options of `llmctl tokenize train`."""

    vocab_size: int = 8192
    sample_bytes: int = 100_000_000  # UTF-8 bytes of text sampled for training
    seed: int = 0
    character_coverage: float = 0.9995  # rarer characters are left to byte fallback
    max_piece_length: int = 16
    split_digits: bool = True  # one token per digit (49% more tokens on GSM8K, see docs/tokenize.md)
    workers: int | None = runtime(None)  # sentencepiece trainer threads; None = all cores


def _open_inputs(paths: list[str] | str) -> list[Dataset]:
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise UsageError("no input dataset given")
    return [Dataset.open(p, columns=["text"]) for p in paths]


def _quotas(totals: list[int], budget: int) -> list[int]:
    """Split `budget` evenly over shards; a shard with less than its share gives the rest away."""
    quotas = [0] * len(totals)
    left, budget_left = sorted(range(len(totals)), key=lambda i: totals[i]), budget
    for k, i in enumerate(left):
        share = budget_left // (len(left) - k)
        quotas[i] = min(totals[i], share)
        budget_left -= quotas[i]
    return quotas


def sample_documents(datasets: list[Dataset], sample_bytes: int, seed: int) -> tuple[list[str], dict[str, Any]]:
    """A seeded sample of whole documents, about `sample_bytes` of UTF-8, spread evenly over shards."""
    shards = [(ds, i) for ds in datasets for i in range(len(ds.shards))]
    lengths = []
    for ds, i in shards:
        col = ds.read_shard(i, ["text"]).column("text")
        lengths.append(pc.fill_null(pc.binary_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64))
    quotas = _quotas([int(a.sum()) for a in lengths], sample_bytes)
    texts: list[str] = []
    for k, ((ds, i), lens, quota) in enumerate(zip(shards, lengths, quotas)):
        if quota <= 0:
            continue
        order = np.random.default_rng([seed, k]).permutation(len(lens))
        cum = np.cumsum(lens[order])
        take = np.sort(order[: int(np.searchsorted(cum, quota)) + 1])
        col = ds.read_shard(i, ["text"]).column("text").take(pa.array(take))
        texts += [t for t in col.to_pylist() if t]
    nbytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    total = int(sum(int(a.sum()) for a in lengths))
    return texts, {"documents": len(texts), "bytes": nbytes, "input_bytes": total, "input_shards": len(shards)}


def _train_signature(cfg: TokenizerTrainConfig, inputs: list[dict[str, Any]]) -> str:
    return sha256_text(
        canonical_json(
            {
                "stage": "tokenizer",
                "config": output_fields(cfg),
                "inputs": [{k: i[k] for k in ("path", "fingerprint")} for i in inputs],
            }
        )
    )


@exclusive_output("out", discard_unfinished=True)
def run_train(
    datasets: list[str] | str, out: str | Path, cfg: TokenizerTrainConfig | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Train a tokenizer into directory `out`; returns its manifest (also if it was already trained).

    Everything is written to a temporary sibling directory, manifest last, then renamed into
    place: an interrupted run leaves no half-written tokenizer behind.
    """
    cfg = cfg or TokenizerTrainConfig()
    if cfg.sample_bytes <= 0:
        raise UsageError(f"--sample-bytes must be positive, got {cfg.sample_bytes}")
    dss = _open_inputs(datasets)
    inputs = [ds.lineage() for ds in dss]
    signature = _train_signature(cfg, inputs)
    out = fs.to_path(out)
    if fs.is_local(out):
        out = out.absolute()
    if out.exists():
        mpath = out / MANIFEST
        if not out.is_dir():
            raise UsageError(f"{out}: output path exists and is not a directory")
        old = read_state(mpath, overwrite) if mpath.is_file() else None
        if old is not None and old.get("signature") == signature:
            return old
        if any(out.iterdir()) and not overwrite:
            what = "a tokenizer trained with another config or input" if old else "other files"
            raise UsageError(f"{out}: holds {what}; pass --overwrite to replace it, or choose another path")
    started = time.time()
    texts, sample = sample_documents(dss, cfg.sample_bytes, cfg.seed)
    if not texts:
        raise UsageError("the input datasets hold no text to train on")
    sampled = time.time()
    tok = Tokenizer.train(
        (c for t in texts for c in training_chunks(t)),
        cfg.vocab_size,
        character_coverage=cfg.character_coverage,
        max_piece_length=cfg.max_piece_length,
        split_digits=cfg.split_digits,
        num_threads=cfg.workers or default_workers(),
    )
    trained = time.time()
    tokens = sum(len(ids) for ids in tok.encode_batch(texts, num_threads=cfg.workers or default_workers()))
    if fs.is_local(out):
        for stale in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):  # left by a killed run (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    else:  # a URI: built locally, then uploaded file by file, manifest last
        tmp = Path(tempfile.mkdtemp(prefix="llmctl-tokenizer-"))
    tok.save(tmp)
    stats = {
        "sample": {**sample, "tokens": tokens, "bytes_per_token": round(sample["bytes"] / max(tokens, 1), 4)},
        "vocab_size": tok.vocab_size,
        "special_tokens": tok.special_ids,
    }
    manifest = {
        "stage": "tokenizer",
        "config": to_dict(cfg),
        "config_output": output_fields(cfg),
        "inputs": inputs,
        "signature": signature,
        "fingerprint": tok.fingerprint,
        "stats": stats,
        "timings": {
            "sample_seconds": round(sampled - started, 3),
            "train_seconds": round(trained - sampled, 3),
            "seconds": round(time.time() - started, 3),
        },
    }
    manifest = write_manifest(tmp, manifest)
    if out.exists():
        fs.rmtree(out)
    if fs.is_local(out):
        os.replace(tmp, out)
        return manifest
    try:
        files = sorted(f for f in tmp.rglob("*") if f.is_file() and f.name != MANIFEST)
        for f in files + [tmp / MANIFEST]:  # the manifest last: the completion marker
            dst = out / f.relative_to(tmp).as_posix()
            fs.mkdirs(dst.parent)
            fs.write_bytes_atomic(dst, f.read_bytes())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# ============================================================================ encoding


@dataclass
class EncodeConfig:
    """Options of `llmctl tokenize encode`."""

    val_fraction: float = 0.01  # share of documents (by id hash) in the "val" split
    seed: int = 0  # seed of the split hash
    batch_rows: int = runtime(1024)  # documents encoded per sentencepiece call
    workers: int | None = runtime(None)  # worker processes; None = all cores
    executor: str = runtime("local")  # local processes, or ray (llmctl.executor.ray)
    ray_address: str = runtime("auto")


def split_of(doc_id: str, val_fraction: float, seed: int = 0) -> str:
    """ "val" or "train" for a document id: a seeded xxh64 hash compared with `val_fraction`."""
    h = xxhash.xxh64_intdigest(doc_id.encode("utf-8", "surrogatepass"), seed=seed)
    return "val" if h < int(val_fraction * 2**64) else "train"


@dataclass
class EncodeTask:
    index: int
    shard: str
    tokenizer_dir: str
    out: StageOutput
    cfg: EncodeConfig
    threads: int
    has_id: bool
    sha256: str | None = None  # of the documents shard, verified before it is read

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def label(self) -> str:
        """How a failure names this task: the shard and the documents shard it reads."""
        return f"{self.name} ({self.shard})"


def _empty_stats() -> dict[str, dict[str, int]]:
    return {s: {"documents": 0, "tokens": 0, "bytes": 0} for s in SPLITS}


def encode_task(task: EncodeTask, report: Reporter) -> dict[str, Any]:
    """Encode one document shard into one token shard; returns per-split counts."""
    started = time.time()
    tok = load_tokenizer(task.tokenizer_dir)
    eos, cfg = tok.eos_id, task.cfg
    stats = _empty_stats()
    skipped = 0
    writer = task.out.shard_writer(f"{task.name}.parquet", TOKENS_SCHEMA)
    columns = ["id", "text"] if task.has_id else ["text"]
    try:
        verify_shard(task.shard, task.sha256)
        for batch in open_parquet(task.shard).iter_batches(batch_size=cfg.batch_rows, columns=columns):
            rows_read = batch.num_rows
            text_col = batch.column("text")
            keep = pc.is_valid(text_col)
            if not pc.all(keep).as_py():
                skipped += len(text_col) - pc.sum(keep).as_py()
                batch = batch.filter(keep)
                text_col = batch.column("text")
            texts = text_col.to_pylist()
            if task.has_id:
                ids_col = batch.column("id").cast(pa.string())
                doc_ids = ids_col.to_pylist()
            else:  # no id column: the id is the hash of the text, so the split is still stable
                doc_ids = [xxhash.xxh128_hexdigest(t.encode("utf-8", "surrogatepass")) for t in texts]
            nbytes = pc.binary_length(text_col).to_numpy(zero_copy_only=False)
            encoded = tok.encode_batch(texts, num_threads=task.threads)
            for e in encoded:
                e.append(eos)
            lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
            splits = [split_of(d, cfg.val_fraction, cfg.seed) for d in doc_ids]
            offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=int(offsets[-1]))
            input_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
            writer.write_table(
                pa.table(
                    {
                        "id": pa.array(doc_ids, pa.string()),
                        "input_ids": input_ids,
                        "split": pa.array(splits, pa.string()),
                    },
                    schema=TOKENS_SCHEMA,
                )
            )
            for s, n_tok, n_b in zip(splits, lengths.tolist(), nbytes.tolist()):
                st = stats[s]
                st["documents"] += 1
                st["tokens"] += n_tok
                st["bytes"] += n_b
            report(docs=rows_read, bytes=int(nbytes.sum()), tokens=int(offsets[-1]))  # null texts count as done
    except BaseException:
        abort_shards(writer)
        raise
    files = close_shards(f"{task.name}.parquet", data=writer)
    record = {"splits": stats, "skipped_null_text": skipped}
    task.out.finish_task(task.name, files, record, seconds=round(time.time() - started, 3))
    return record


def _summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    total = _empty_stats()
    skipped = 0
    for r in records:
        skipped += r["skipped_null_text"]
        for s in SPLITS:
            for k, v in r["splits"][s].items():
                total[s][k] += v
    out: dict[str, Any] = {}
    for s in SPLITS:
        st = total[s]
        text_tokens = st["tokens"] - st["documents"]  # without the EOS that ends each document
        out[s] = {
            **st,
            "text_tokens": text_tokens,
            "bytes_per_token": round(st["bytes"] / text_tokens, 4) if text_tokens else None,
        }
    out["documents"] = sum(total[s]["documents"] for s in SPLITS)
    out["tokens"] = sum(total[s]["tokens"] for s in SPLITS)
    out["bytes"] = sum(total[s]["bytes"] for s in SPLITS)
    out["skipped_null_text"] = skipped
    return out


@exclusive_output("out", discard_unfinished=True)
def run_encode(
    dataset: str | Path,
    tokenizer_dir: str | Path,
    out: str | Path,
    cfg: EncodeConfig | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Encode a documents dataset into a token dataset; returns its manifest.

    The shard tasks run on `cfg.executor` (local processes or Ray): same function, same output.
    """
    cfg = cfg or EncodeConfig()
    with using(cfg.executor, cfg.ray_address, workers=cfg.workers or default_workers()):
        return _run_encode(dataset, tokenizer_dir, out, cfg, overwrite, progress)


def _run_encode(
    dataset: str | Path,
    tokenizer_dir: str | Path,
    out: str | Path,
    cfg: EncodeConfig,
    overwrite: bool,
    progress: bool | None,
) -> dict[str, Any]:
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    ds = _open_inputs([str(dataset)])[0]
    tok = load_tokenizer(tokenizer_dir)
    workers = cfg.workers or default_workers()
    fs.check_shared(out, workers, cfg.executor)
    stage = StageOutput(fs.to_path(out), "tokens", cfg, [ds.lineage(), tok.lineage()], overwrite=overwrite)
    if stage.complete:
        note(f"{out}: already complete (same config and inputs); nothing to do", progress)
        return stage.manifest
    has_id = "id" in ds.column_names
    all_tasks = [
        EncodeTask(i, str(p), fs.display(tokenizer_dir), stage, cfg, 1, has_id, r.get("sha256"))
        for i, (p, r) in enumerate(zip(ds.shards, ds.shard_records))
    ]
    todo = [t for t in all_tasks if not stage.task_done(t.name)]
    note_resume(stage, len(all_tasks), progress)
    procs = max(1, min(workers, len(todo)))
    for t in todo:
        t.threads = max(1, workers // procs)
    total = sum(fs.parquet_file(t.shard).metadata.num_rows for t in todo)  # exact, so the bar ends at 100%
    started = time.time()
    with StageProgress("tokenize", total or None, enabled=progress, unit="docs") as prog:
        run_tasks(encode_task, todo, workers=procs, progress=prog)
    summary = _summarize([stage.task_record(t.name)["stats"] for t in all_tasks])
    summary["tokenizer"] = {"vocab_size": tok.vocab_size, "eos_id": tok.eos_id}
    return stage.finalize(
        [t.name for t in all_tasks],
        TOKENS_SCHEMA,
        stats=summary,
        timings={"run_seconds": round(time.time() - started, 3), "workers": workers, "processes": procs},
    )
