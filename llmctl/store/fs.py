"""Files anywhere fsspec reaches: local paths, or URIs such as s3://, gs://, hdfs://, file://, memory://.

The dataset contract (llmctl.store.dataset) reads and writes through here, so the filter's inputs, every
dataset a stage reads, and the outputs of the data stages (filter with its dedup intermediates,
tokenize encode) may live on a local disk or on any fsspec filesystem (remote protocols need their
fsspec package installed: s3fs, gcsfs, ...). Training run directories stay local.

- `to_path(p)`: a local path is a `pathlib.Path` (local paths never touch fsspec); a URI is a
  `upath.UPath` (universal_pathlib), which has the same API (`/`, `exists`, `read_text`, `glob`, ...).
- Parquet goes through `read_table`, `parquet_file`, `read_schema`, `parquet_writer`, which hand
  pyarrow the fsspec filesystem of a URI.
- The contract's two atomic steps work on both: `replace(tmp, final)` is `os.replace`
  locally and fsspec's move elsewhere (on an object store a move is a server-side copy then a delete:
  the final object appears whole or not at all); `write_text_atomic` writes a temporary file and
  moves it into place.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from llmctl.errors import UsageError

AnyPath = Any  # pathlib.Path or upath.UPath


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def is_local(path: AnyPath) -> bool:
    return isinstance(path, Path) or (isinstance(path, str) and not is_uri(path))


def to_path(path: str | AnyPath) -> AnyPath:
    """`pathlib.Path` for a local path, `UPath` for a URI (a UPath is returned unchanged)."""
    if isinstance(path, Path):
        return path
    if not isinstance(path, str):  # already a UPath
        return path
    if not is_uri(path):
        return Path(path)
    try:
        from upath import UPath  # fsspec: imported only for a URI, local paths never touch it

        p = UPath(path)
        p.fs  # noqa: B018 - fail here, with a clear message, when the protocol's package is missing
        return p
    except (ImportError, ValueError) as e:
        raise UsageError(f"{path}: cannot open this filesystem ({str(e).splitlines()[0]})") from None


def display(path: AnyPath) -> str:
    """How a path is shown and recorded: absolute for local paths, the URI otherwise."""
    p = to_path(path)
    return str(p.resolve()) if isinstance(p, Path) else str(p)


def _fs(uri: str):
    p = to_path(uri)
    return p.fs, p.path


def _fs_of(path: AnyPath) -> tuple[Any, str]:
    """(pyarrow filesystem argument, path) for pyarrow: (None, local path) or (fsspec fs, path)."""
    p = to_path(path)
    if isinstance(p, Path):
        return None, str(p)
    return p.fs, p.path


# ----------------------------------------------------------------------------- bytes and text


def open_binary(path: str | AnyPath) -> IO[bytes]:
    """A binary file object for reading a local path or a URI."""
    p = to_path(path)
    return open(p, "rb") if isinstance(p, Path) else p.open("rb")


def size(path: str | AnyPath) -> int:
    return int(to_path(path).stat().st_size)


def exists(path: str | AnyPath) -> bool:
    return to_path(path).exists()


def write_text_atomic(path: AnyPath, text: str) -> None:
    """Write a file so that readers see either the old content or the new, never a part."""
    write_bytes_atomic(path, text.encode("utf-8"))


def atomic_write_json(path: str | AnyPath, obj: Any) -> None:
    """`obj` as JSON (indented, keys sorted), written as `write_text_atomic` writes."""
    write_text_atomic(to_path(path), json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def write_bytes_atomic(path: AnyPath, data: bytes) -> None:
    p = to_path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    if isinstance(p, Path):
        tmp.unlink(
            missing_ok=True
        )  # a leftover of a killed process with the same pid (a link is removed, not followed)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    else:
        tmp.write_bytes(data)
    replace(tmp, p)


def replace(tmp: AnyPath, final: AnyPath) -> None:
    """Move a finished temporary file to its final name (atomic locally)."""
    if isinstance(final, Path):
        os.replace(tmp, final)
        return
    fs = final.fs
    if fs.exists(final.path):
        fs.rm(final.path)
    fs.mv(tmp.path, final.path)


def rmtree(path: AnyPath) -> None:
    p = to_path(path)
    if isinstance(p, Path):
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.fs.rm(p.path, recursive=True)


def unlink(path: AnyPath) -> None:
    p = to_path(path)
    if isinstance(p, Path):
        p.unlink(missing_ok=True)
    elif p.exists():
        p.fs.rm(p.path)


def mkdirs(path: AnyPath) -> None:
    to_path(path).mkdir(parents=True, exist_ok=True)


def check_shared(path: AnyPath, workers: int, executor: str) -> None:
    """A memory:// filesystem lives in one process: refuse it when tasks may run in others."""
    p = to_path(path)
    if not is_local(p) and getattr(p, "protocol", "") == "memory" and (workers > 1 or executor == "ray"):
        raise UsageError(f"{path}: a memory:// filesystem lives in one process; use --workers 1 and the local executor")


# ----------------------------------------------------------------------------- Parquet


def read_table(path: AnyPath, columns: Sequence[str] | None = None, filters: Any = None) -> pa.Table:
    fs, p = _fs_of(path)
    return pq.read_table(p, columns=list(columns) if columns is not None else None, filters=filters, filesystem=fs)


def parquet_file(path: AnyPath) -> pq.ParquetFile:
    fs, p = _fs_of(path)
    if fs is None:
        return pq.ParquetFile(p)
    return pq.ParquetFile(p, filesystem=fs)


def read_schema(path: AnyPath) -> pa.Schema:
    return parquet_file(path).schema_arrow


def parquet_writer(path: AnyPath, schema: pa.Schema, **kwargs: Any) -> pq.ParquetWriter:
    fs, p = _fs_of(path)
    return pq.ParquetWriter(p, schema, filesystem=fs, **kwargs)


# ----------------------------------------------------------------------------- listing inputs


def expand(pattern: str) -> list[tuple[str, bool]]:
    """(URI, is_directory) for a URI, a directory URI or a glob of URIs, sorted."""
    fs, p = _fs(pattern)
    paths = sorted(fs.glob(p)) if any(c in p for c in "*?[") else ([p] if fs.exists(p) else [])
    return [(fs.unstrip_protocol(x), bool(fs.isdir(x))) for x in paths]


def sizes_below(path: AnyPath) -> dict[str, int]:
    """{path: size} of every file below a directory URI, from one listing (keys as `key_of` gives them)."""
    p = to_path(path)
    return {key_of(p.fs, k): int(v.get("size") or 0) for k, v in p.fs.find(p.path, detail=True).items()}


def key_of(store: Any, path: Any) -> str:
    """A path on an fsspec filesystem as that filesystem names it (no protocol)."""
    return store._strip_protocol(str(path)).rstrip("/")


def list_files(uri: str) -> list[str]:
    """Every file below a directory URI, sorted."""
    fs, p = _fs(uri)
    return sorted(fs.unstrip_protocol(x) for x in fs.find(p))


# ----------------------------------------------------------------------------- file modes


def umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def default_file_mode() -> int:
    """The mode `open(..., "w")` gives a new file: 0666 less the umask (0644 with the usual 022)."""
    return 0o666 & ~umask()
