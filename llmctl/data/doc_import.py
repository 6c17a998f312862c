"""`llmctl data import --format docs`: plain text, JSONL and Parquet sources as a documents dataset.

For sources that are not crawls (books, code, a wiki dump, TinyStories, GSM8K text) and so skip
`llmctl filter`: the output has the documents schema (`id`, `text`, `source`) and a
manifest, so `tokenize` and `mix` take it like a filter output.

What a document is:
- `.txt` (or `.txt.gz`): the whole file, or the pieces between `--separator` (default `auto`:
  `<|endoftext|>` when the file holds one, as TinyStories' files do; `blank-line`: paragraphs);
- `.jsonl` / `.jsonl.gz` / `.parquet`: one row; its text is `--text-field` (default: `text`, else
  `content`); a comma list (`question,answer`) joins the fields with a blank line;
- a directory: every such file below it, in sorted path order.
Bad records are counted and skipped (a line that is not UTF-8 or not JSON, a row whose text is
missing, empty or not a string); an input with no document at all is an error. A document's `id` is
the row's own `id` if it has one, else a hash of the file name and the document's position, so the
tokenizer's train/val split of a document does not move when more files are added.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import xxhash

from llmctl.errors import UsageError
from llmctl.store.dataset import StageOutput, fingerprint_file, shard_name, write_shard
from llmctl.store.integrity import open_parquet
from llmctl.store.lock import exclusive_output

DOCS_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])
SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".json", ".parquet")
SHARD_ROWS = 50_000
EOT = "<|endoftext|>"


@dataclass
class DocImportConfig:
    format: str = "docs"
    text_field: str = "auto"
    separator: str = "auto"


def input_files(src: str | Path) -> list[Path]:
    p = Path(src)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES))
        if not files:
            raise UsageError(f"{p}: holds no {', '.join(SUFFIXES)} file")
        return files
    if not p.is_file():
        raise UsageError(f"{p}: no such file or directory")
    if not p.name.endswith(SUFFIXES):
        raise UsageError(f"{p}: expected a text, JSONL or Parquet file ({', '.join(SUFFIXES)}) or a directory")
    return [p]


def _open_text(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _split_text(text: str, separator: str) -> list[str]:
    if separator == "auto":
        separator = EOT if EOT in text else ""
    if separator == "blank-line":
        parts = re.split(r"\n\s*\n", text)
    elif separator:
        parts = text.split(separator.encode().decode("unicode_escape"))
    else:
        parts = [text]
    return [p.strip() for p in parts if p.strip()]


def _text_of(row: dict[str, Any], field: str) -> Any:
    if field == "auto":
        field = "text" if "text" in row else "content" if "content" in row else ""
        if not field:
            raise UsageError(
                f"rows have no 'text' or 'content' field (fields: {', '.join(map(str, row))}); "
                "name one with --text-field"
            )
    names = [f.strip() for f in field.split(",")]
    vals = [row.get(n) for n in names]
    if len(vals) == 1:
        return vals[0]
    return None if any(not isinstance(v, str) for v in vals) else "\n\n".join(vals)


def _rows(path: Path, cfg: DocImportConfig, skipped: dict[str, int]) -> Iterator[tuple[Any, Any]]:
    """(own id or None, text) of every record of one file; bad records counted in `skipped`."""

    def bad(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    if path.name.endswith((".txt", ".txt.gz")):
        with _open_text(path) as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad("invalid UTF-8")
            return
        for t in _split_text(text, cfg.separator):
            yield None, t
    elif path.name.endswith(".parquet"):
        pf = open_parquet(path)
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield row.get("id"), _text_of(row, cfg.text_field)
    else:
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                try:
                    s = line.decode("utf-8")
                except UnicodeDecodeError:
                    bad("invalid UTF-8")
                    continue
                if not s.strip():
                    continue
                try:
                    row = json.loads(s)
                except json.JSONDecodeError:
                    bad("not JSON")
                    continue
                if not isinstance(row, dict):
                    bad("not a JSON object")
                    continue
                yield row.get("id"), _text_of(row, cfg.text_field)


WHOLE_FILE_NOTICE_CHARS = 100_000


def _warn_whole_files(docs: list[tuple[str, str, str]], cfg: DocImportConfig) -> None:
    """A large text file with no `<|endoftext|>` becomes one document under `--separator auto`:
    say so, since a corpus of stories or paragraphs is usually meant to be split."""
    if cfg.separator != "auto":
        return
    per_file: dict[str, list[str]] = {}
    for _, text, name in docs:
        per_file.setdefault(name, []).append(text)
    for name, texts in per_file.items():
        if (
            len(texts) == 1
            and name.endswith((".txt", ".txt.gz"))
            and len(texts[0]) > WHOLE_FILE_NOTICE_CHARS
            and re.search(r"\n\s*\n", texts[0])
        ):
            print(
                f"notice: {name}: no {EOT} in {len(texts[0]):,} characters, imported as one document; "
                "--separator blank-line splits it at blank lines",
                file=sys.stderr,
            )


@exclusive_output("out", discard_unfinished=True)
def import_docs(
    src: str | Path, out: str | Path, text_field: str = "auto", separator: str = "auto", overwrite: bool = False
) -> dict[str, Any]:
    """Import text / JSONL / Parquet files as a `documents` dataset; returns its manifest."""
    files = input_files(src)
    cfg = DocImportConfig(text_field=text_field, separator=separator)
    inputs = [{"path": str(f.resolve()), "stage": "file", "fingerprint": fingerprint_file(f)} for f in files]
    skipped: dict[str, int] = {}
    # read once to check before anything is written: a source with no document writes nothing
    docs: list[tuple[str, str, str]] = []
    for f in files:
        for k, (own, text) in enumerate(_rows(f, cfg, skipped)):
            if not isinstance(text, str):
                skipped["no text"] = skipped.get("no text", 0) + 1
                continue
            if not text.strip():
                skipped["empty text"] = skipped.get("empty text", 0) + 1
                continue
            doc_id = (
                str(own)
                if own is not None
                else xxhash.xxh64_hexdigest(f"{f.name}:{k}".encode("utf-8", "surrogatepass"))
            )
            docs.append((doc_id, text, f.name))
    if not docs:
        raise UsageError(f"{src}: no document to import (skipped: {skipped or 'nothing read'})")
    _warn_whole_files(docs, cfg)
    so = StageOutput(out, "documents", cfg, inputs=inputs, overwrite=overwrite)
    if so.complete:
        return so.manifest
    names = []
    for i in range(0, len(docs), SHARD_ROWS):
        name = shard_name(i // SHARD_ROWS)
        names.append(name)
        if so.task_done(name):
            continue
        chunk = docs[i : i + SHARD_ROWS]
        table = pa.table(
            {"id": [d[0] for d in chunk], "text": [d[1] for d in chunk], "source": [d[2] for d in chunk]},
            schema=DOCS_SCHEMA,
        )
        so.finish_task(name, {"data": [write_shard(so, f"{name}.parquet", table, DOCS_SCHEMA)]})
    nbytes = sum(len(d[1].encode("utf-8", "surrogatepass")) for d in docs)
    stats = {
        "read": len(docs) + sum(skipped.values()),
        "kept": len(docs),
        "skipped": skipped,
        "bytes": nbytes,
        "files": len(files),
        "val": 0,
    }
    return so.finalize(names, DOCS_SCHEMA, stats=stats)
