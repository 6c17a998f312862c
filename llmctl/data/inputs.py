"""What `llmctl filter` reads: files, globs, directories (recursively), fsspec URIs and llmctl datasets,
expanded into a sorted list of input files, each with its kind and lineage. Anything unusable is a
one-line `UsageError` before any output is written."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.data.extract import ExtractConfig, input_kind, parquet_columns
from llmctl.errors import UsageError
from llmctl.store import fs
from llmctl.store.dataset import Dataset, fingerprint_file
from llmctl.store.fs import is_uri


@dataclass
class InputFile:
    path: str  # what is read: an absolute local path or a URI (Ray workers run in another directory)
    kind: str
    lineage: dict[str, Any]
    source: str = ""  # the documents' `source` column: the path as given on the command line
    sha256: str | None = None  # a shard of an llmctl dataset: its checksum, verified before it is read


def resolve_inputs(patterns: list[str], cfg: ExtractConfig) -> list[InputFile]:
    """Expand files, globs and directories (recursively) into a sorted list of input files.

    A directory holding an llmctl dataset contributes its shards, and its manifest as lineage.
    Anything unusable is a `UsageError` before any output is written.
    """
    if not patterns:
        raise UsageError("no input given")
    found: list[InputFile] = []
    for pat in patterns:
        if is_uri(pat):  # s3://, gs://, hdfs://, file://, ...: read through fsspec
            found += _uri_inputs(pat)
            continue
        matches = sorted(glob.glob(pat, recursive=True)) if glob.has_magic(pat) else [pat]
        if not matches:
            raise UsageError(f"{pat}: no input matches")
        for m in matches:
            p = Path(m)
            if not p.exists():
                raise UsageError(f"{p}: no such file or directory")
            if p.is_dir() and Dataset.is_dataset(p):
                found += _dataset_inputs(Dataset.open(p))
            elif p.is_dir():
                found += [_input_file(f) for f in _directory_files(p)]
            else:
                found.append(_input_file(p))
    seen: set[str] = set()
    unique = []
    for f in found:
        key = f.path if is_uri(f.path) else os.path.realpath(f.path)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    for f in unique:
        if f.kind == "parquet" and cfg.text_field not in parquet_columns(f.path):
            cols = ", ".join(parquet_columns(f.path))
            raise UsageError(f"{f.path}: Parquet file has no {cfg.text_field!r} column (columns: {cols})")
    return unique


def _pick_inputs(files: list[tuple[str, str]], where: str) -> list[str]:
    """Of a directory's (path, relative path) files, those of the first kind present among WARC, WET,
    JSONL, Parquet (so a crawl folder's own metadata .jsonl is not read as documents); hidden and
    `_`-prefixed entries are skipped."""
    by_kind: dict[str, list[str]] = {}
    for path, rel in sorted(files):
        kind = input_kind(path)
        if kind and not any(part.startswith(("_", ".")) for part in rel.split("/")):
            by_kind.setdefault(kind, []).append(path)
    for kind in ("warc", "wet", "jsonl", "parquet"):
        if kind in by_kind:
            return by_kind[kind]
    raise UsageError(f"{where}: directory has no WARC, WET, JSONL or Parquet files")


def _directory_files(d: Path) -> list[Path]:
    files = [(str(f), f.relative_to(d).as_posix()) for f in d.rglob("*") if f.is_file()]
    return [Path(p) for p in _pick_inputs(files, str(d))]


def _uri_inputs(pattern: str) -> list[InputFile]:
    matches = fs.expand(pattern)
    if not matches:
        raise UsageError(f"{pattern}: no input matches")
    out = []
    for uri, is_dir in matches:
        if is_dir and Dataset.is_dataset(uri):  # an llmctl dataset on a URI: its shards, its lineage
            out += _dataset_inputs(Dataset.open(uri))
        elif is_dir:
            base = uri.rstrip("/") + "/"
            files = [(f, f[len(base) :]) for f in fs.list_files(uri)]
            out += [_uri_input(f) for f in _pick_inputs(files, uri)]
        else:
            out.append(_uri_input(uri))
    return out


def _dataset_inputs(ds: Dataset) -> list[InputFile]:
    return [
        InputFile(str(s), "parquet", ds.lineage(), sha256=r.get("sha256")) for s, r in zip(ds.shards, ds.shard_records)
    ]


def _uri_input(uri: str) -> InputFile:
    kind = input_kind(uri)
    if kind is None:
        raise UsageError(f"{uri}: unsupported input (expected .warc[.gz], .wet[.gz], .jsonl[.gz] or .parquet)")
    return InputFile(uri, kind, {"path": uri, "fingerprint": fingerprint_file(uri)})


def _input_file(p: Path) -> InputFile:
    kind = input_kind(p)
    if kind is None:
        raise UsageError(f"{p}: unsupported input (expected .warc[.gz], .wet[.gz], .jsonl[.gz] or .parquet)")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{p}: not readable")
    return InputFile(os.path.abspath(p), kind, {"path": str(p.resolve()), "fingerprint": fingerprint_file(p)}, str(p))
