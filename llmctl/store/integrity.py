"""What a stage trusts in what it reads: checked manifests, confined shard paths, verified bytes.

- `fingerprint_file`: the content fingerprint of a raw input (every byte of it).
- `read_manifest`: a dataset's `_manifest.json`, refused with one line when it is not JSON, not an
  llmctl manifest, or names a shard outside its dataset (`../x`, `/abs/x`: `safe_relpath`).
- `verify_shard`: a shard's bytes against the SHA-256 its manifest records, before a stage reads
  it; LLMCTL_VERIFY=0 skips it (the cost, ~15% of pretrain's token load and ~0.1% of a filter run,
  is in docs/reliability.md).
- `open_parquet`, `read_parquet`: Parquet that is empty, garbage or cut is one line, not a
  pyarrow traceback.
- `read_state`: an output's own `_manifest.json` / `_run.json`, damaged ones as one line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from llmctl.errors import UsageError
from llmctl.store import fs


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with fs.open_binary(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint_file(path: str | Path) -> str:
    """A content fingerprint of a raw input file (WARC, JSONL, weights, ...): size + SHA-256 of all of it.

    Every byte counts, so an edit anywhere in a file is a new input (the first and last MiB alone
    missed edits in between). Hashing runs at ~1 GB/s on one core here, filtering the same crawl
    files at ~1.4 MB/s: the fingerprints cost 0.13% of a filter run (benchmarks/integrity.py,
    docs/reliability.md).
    """
    size = fs.size(path)
    return f"size{size}-{file_sha256(path)}"


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def verify_checksums() -> bool:
    """Shard checksums are verified on read unless LLMCTL_VERIFY=0 (see docs/reliability.md for the cost)."""
    return os.environ.get("LLMCTL_VERIFY", "1").strip().lower() not in ("0", "false", "no", "off")


def verify_shard(path: Any, sha256: str | None) -> None:
    """One-line `UsageError` when a shard's bytes do not hash to the SHA-256 its manifest records."""
    if not sha256 or not verify_checksums():
        return
    try:
        got = file_sha256(path)
    except OSError as e:
        raise UsageError(f"{path}: cannot read shard ({e.strerror or first_line(e)})") from None
    if got != sha256:
        raise UsageError(
            f"{path}: shard does not match the SHA-256 in its manifest (corrupt or changed after "
            "it was written); re-run the stage that made it"
        )


def open_parquet(path: Any) -> Any:
    """`pyarrow.parquet.ParquetFile` of a file, or a one-line `UsageError` when it is not Parquet."""
    try:
        return fs.parquet_file(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise UsageError(f"{path}: not a readable Parquet file ({first_line(e)})") from None


def read_parquet(path: Any, columns: Sequence[str] | None = None) -> pa.Table:
    try:
        return fs.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise UsageError(f"{path}: not a readable Parquet file ({first_line(e)})") from None


def safe_relpath(rel: Any, where: Any) -> str:
    """A shard path from a manifest, confined to its dataset: relative, no `..`, no drive or scheme."""
    if not isinstance(rel, str) or not rel:
        raise UsageError(f"{where}: a shard path is not a string")
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith(("/", "\\")) or "://" in rel or ":" in parts[0] or any(x in ("", ".", "..") for x in parts):
        raise UsageError(f"{where}: shard path {rel!r} leaves the dataset directory; refusing to read it")
    return rel


def read_manifest(mpath: Any) -> dict[str, Any]:
    """A dataset's `_manifest.json`, checked enough that a crafted or damaged one is a one-line error."""
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{mpath}: unreadable manifest ({e})") from None
    bad = f"{mpath}: not an llmctl manifest"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards", []), list):
        raise UsageError(f"{bad} (expected an object with a list of shards)")
    manifest.setdefault("shards", [])
    for role, recs in [("shards", manifest["shards"]), *(manifest.get("files") or {}).items()]:
        if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
            raise UsageError(f"{bad} ({role}: expected a list of file records)")
        for r in recs:
            safe_relpath(r.get("path"), mpath)
            if not isinstance(r.get("rows", 0), int) or not isinstance(r.get("bytes", 0), int):
                raise UsageError(f"{bad} ({r['path']}: rows and bytes must be integers)")
    if not isinstance(manifest.get("schema", []), list) or not all(
        isinstance(f, dict) and "name" in f for f in manifest.get("schema", [])
    ):
        raise UsageError(f"{bad} (schema: expected a list of {{name, type}})")
    return manifest


def read_state(path: Any, overwrite: bool = False) -> dict[str, Any]:
    """An output's own `_manifest.json` or `_run.json` as a dict; a damaged one is a one-line error
    (or, with `overwrite`, an empty record: the output is replaced)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(state, dict):
            return state
        problem = "not a JSON object"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problem = first_line(e) if path.stat().st_size else "empty file"
    if overwrite:
        return {}
    raise UsageError(f"{path}: damaged ({problem}); pass --overwrite to replace this output, or choose another path")
