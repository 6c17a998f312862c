"""Input files anywhere fsspec reaches: local paths, or URIs such as s3://, gs://, hdfs://, http(s)://.

Only *reading* goes through here (`llmctl filter`'s inputs: WARC, WET, JSONL, Parquet); outputs are
local directories, because the dataset contract relies on a local atomic rename. Remote protocols
need their fsspec package installed (s3fs, gcsfs, ...); local paths never touch fsspec.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from llmctl.errors import UsageError


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def _fs(uri: str):
    try:
        import fsspec

        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:
        raise UsageError(f"{uri}: cannot open this filesystem ({str(e).splitlines()[0]})") from None


def open_binary(path: str | Path) -> IO[bytes]:
    """A binary file object for reading a local path or a URI."""
    if not is_uri(path):
        return open(path, "rb")
    fs, p = _fs(str(path))
    return fs.open(p, "rb")


def size(path: str | Path) -> int:
    if not is_uri(path):
        return Path(path).stat().st_size
    fs, p = _fs(str(path))
    return int(fs.size(p))


def exists(path: str | Path) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    fs, p = _fs(str(path))
    return bool(fs.exists(p))


def expand(pattern: str) -> list[tuple[str, bool]]:
    """(URI, is_directory) for a URI, a directory URI or a glob of URIs, sorted."""
    fs, p = _fs(pattern)
    paths = sorted(fs.glob(p)) if any(c in p for c in "*?[") else ([p] if fs.exists(p) else [])
    return [(fs.unstrip_protocol(x), bool(fs.isdir(x))) for x in paths]


def list_files(uri: str) -> list[str]:
    """Every file below a directory URI, sorted."""
    fs, p = _fs(uri)
    return sorted(fs.unstrip_protocol(x) for x in fs.find(p))
