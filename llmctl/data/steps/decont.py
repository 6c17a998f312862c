"""Decontamination: drop documents that share a word n-gram with an eval set's items.

`decontaminate.sets` lists eval sets: MMLU-layout CSV (`question,A,B,C,D,answer`: the question
and its choices make an item), JSONL or Parquet (an item is the `fields` of a row; by default the
first of question, prompt, problem, input, text the file has), or a directory of such files (an
MMLU folder, examples/eval, an llmctl dataset). `mmlu` and `gsm8k` name the bundled
examples/eval files when no such path exists. A set's name is its file stem or folder name.

Items and documents are normalized as `eval --task contamination` does (llmctl.data.ngrams:
lower-cased `\\w+` words), so case, punctuation and line wrapping do not hide an item. A document
with an n-gram (`n`, 13 by default) of an item is dropped with reason `decont.<set>` (the set of
its first matching n-gram; detail: that n-gram). With `mode: span` only the matched n-grams'
character spans are cut out (counted in `decont.<set>.spans` and `.chars_cut`); a document whose
cut text still matches after 3 rounds, or has no word left, is dropped. Off unless `sets` is set.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from llmctl.data.document import DETAIL_KEY, Document
from llmctl.data.ngrams import grams, word_spans, words
from llmctl.errors import UsageError
from llmctl.store import fs
from llmctl.store.integrity import file_sha256

MODES = ("drop", "span")
TEXT_FIELDS = ("question", "prompt", "problem", "input", "text")  # the first present is an item's text
SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
BUNDLED = {"mmlu": "examples/eval/mmlu", "gsm8k": "examples/eval/gsm8k_test.jsonl"}
_REPO = Path(__file__).resolve().parents[3]  # a source checkout, where examples/ lives
SPAN_ROUNDS = 3


@dataclass
class DecontConfig:
    sets: list[str] = field(default_factory=list)  # eval sets (files, folders, mmlu, gsm8k); [] = step off
    n: int = 13  # words per n-gram
    mode: str = "drop"  # drop: drop the document; span: cut the matched spans out of it
    fields: list[str] = field(default_factory=list)  # JSONL/Parquet fields of an item; [] = first of TEXT_FIELDS

    @property
    def enabled(self) -> bool:
        return bool(self.sets)


def resolve_set(path: str) -> Path:
    """The file or folder `path` names (a bundled set for `mmlu`/`gsm8k` when no such path exists)."""
    p = Path(path)
    if not p.exists() and p.name.lower() in BUNDLED and (_REPO / BUNDLED[p.name.lower()]).exists():
        return _REPO / BUNDLED[p.name.lower()]
    if not p.exists():
        raise UsageError(f"decontaminate: {path}: no such eval set (a file, a folder, mmlu or gsm8k)")
    return p


def set_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", *SUFFIXES):
        name = name.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name) or "set"


def set_files(path: Path) -> list[Path]:
    """The eval files of a set: the file itself, or a folder's CSV/JSONL/Parquet files (not `_*`, `.*`)."""
    if path.is_file():
        if not path.name.endswith(SUFFIXES):
            raise UsageError(f"decontaminate: {path}: an eval set is .csv, .jsonl or .parquet")
        return [path]
    files = sorted(
        f
        for f in path.rglob("*")
        if f.is_file()
        and f.name.endswith(SUFFIXES)
        and not any(part.startswith(("_", ".")) for part in f.relative_to(path).parts)
    )
    if not files:
        raise UsageError(f"decontaminate: {path}: no .csv, .jsonl or .parquet eval files in it")
    return files


def _row_text(row: Any, fields: list[str], where: str) -> str:
    if not isinstance(row, dict):
        raise UsageError(f"decontaminate: {where}: not a JSON object")
    names = fields or [next((f for f in TEXT_FIELDS if f in row), "")]
    missing = [f for f in names if row.get(f) is None]
    if missing:
        wanted = ", ".join(fields or TEXT_FIELDS)
        raise UsageError(f"decontaminate: {where}: no text field ({wanted}); set decontaminate.fields")
    return " ".join(str(row[f]) for f in names)


def read_items(path: Path, fields: list[str]) -> list[str]:
    """The item texts of one eval file."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".csv":
            rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
            return [" ".join([r[0], *r[1:-1]]) for r in rows if r]
        if path.suffix == ".parquet":
            table = pq.read_table(io.BytesIO(raw))
            return [_row_text(r, fields, f"{path} row {i}") for i, r in enumerate(table.to_pylist())]
        lines = raw.decode("utf-8").splitlines()
        return [_row_text(json.loads(ln), fields, f"{path}:{i + 1}") for i, ln in enumerate(lines) if ln.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise UsageError(f"decontaminate: {path}: cannot read it ({str(e).splitlines()[0] if str(e) else e})") from None


@dataclass(frozen=True)
class EvalSet:
    name: str
    files: tuple[Path, ...]
    items: int
    too_short: int  # items with fewer than n words: they cannot match


def load_sets(cfg: DecontConfig) -> tuple[list[EvalSet], dict[tuple[str, ...], tuple[int, int]]]:
    """The eval sets and their n-gram index: n-gram -> (set, item) of its first occurrence."""
    if cfg.n < 1:
        raise UsageError("decontaminate.n must be >= 1")
    if cfg.mode not in MODES:
        raise UsageError(f"decontaminate.mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    paths = [resolve_set(p) for p in cfg.sets]
    key = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for p in paths for f in set_files(p))
    return _load(tuple(str(p) for p in paths), key, tuple(cfg.fields), cfg.n)


@lru_cache(maxsize=4)
def _load(paths: tuple[str, ...], _key: tuple, fields: tuple[str, ...], n: int):
    sets: list[EvalSet] = []
    index: dict[tuple[str, ...], tuple[int, int]] = {}
    for p in map(Path, paths):
        name = set_name(p)
        if any(s.name == name for s in sets):
            raise UsageError(f"decontaminate: two eval sets are named {name!r}; rename one")
        files = set_files(p)
        items = [t for f in files for t in read_items(f, list(fields))]
        short = 0
        for i, text in enumerate(items):
            ws = words(text)
            short += len(ws) < n
            for g in grams(ws, n):
                index.setdefault(g, (len(sets), i))
        sets.append(EvalSet(name, tuple(files), len(items), short))
    return sets, index


def lineage(cfg: DecontConfig) -> list[dict[str, str]]:
    """Each eval file as an input of the output: a changed eval set makes a new output."""
    return [
        {"path": fs.display(f), "stage": f"decontaminate.{set_name(p)}", "fingerprint": file_sha256(str(f))}
        for p in map(resolve_set, cfg.sets)
        for f in set_files(p)
    ]


def summary(cfg: DecontConfig) -> dict[str, Any]:
    """What the manifest records: n, mode, and per set its files, items and fingerprint."""
    sets, index = load_sets(cfg)
    return {
        "n": cfg.n,
        "mode": cfg.mode,
        "ngrams": len(index),
        "sets": [
            {
                "name": s.name,
                "files": [fs.display(f) for f in s.files],
                "items": s.items,
                "too_short_items": s.too_short,
                "fingerprints": [file_sha256(str(f)) for f in s.files],
            }
            for s in sets
        ],
    }


class DecontFilter:
    """The `decontaminate` step: drops (or, in span mode, cuts) what shares an n-gram with an eval set."""

    name = "decont"

    def __init__(self, cfg: DecontConfig):
        self.cfg = cfg
        self.sets, self.index = load_sets(cfg)
        self.firsts = {g[0] for g in self.index}  # cheap test before building a tuple

    def matches(self, ws: list[str]) -> list[tuple[int, int]]:
        """(word position, set index) of each n-gram of `ws` found in the index, in order."""
        n, index, firsts = self.cfg.n, self.index, self.firsts
        out = []
        for i in range(len(ws) - n + 1):
            if ws[i] in firsts:
                hit = index.get(tuple(ws[i : i + n]))
                if hit is not None:
                    out.append((i, hit[0]))
        return out

    def _reason(self, doc: Document, ws: list[str], pos: int, s: int) -> str:
        doc.meta[DETAIL_KEY] = " ".join(ws[pos : pos + self.cfg.n])
        return f"decont.{self.sets[s].name}"

    def first_match(self, ws: list[str]) -> tuple[int, int] | None:
        """(word position, set index) of the first n-gram of `ws` in the index, else None."""
        n, index, firsts = self.cfg.n, self.index, self.firsts
        for i in range(len(ws) - n + 1):
            if ws[i] in firsts and (hit := index.get(tuple(ws[i : i + n]))) is not None:
                return i, hit[0]
        return None

    def __call__(self, doc: Document, stats: Counter[str]) -> str | None:
        ws = words(doc.text)
        hit = self.first_match(ws)
        if hit is None:
            return None
        if self.cfg.mode == "drop":
            return self._reason(doc, ws, *hit)
        text = doc.text
        first: str | None = None
        for _ in range(SPAN_ROUNDS):
            ws, spans = word_spans(text)
            found = self.matches(ws)
            if not found:
                break
            name = self.sets[found[0][1]].name
            first = first or name
            cuts: list[list[int]] = []
            for i, s in found:
                start, end = spans[i][0], spans[i + self.cfg.n - 1][1]
                stats[f"decont.{self.sets[s].name}.spans"] += 1
                if cuts and start <= cuts[-1][1]:
                    cuts[-1][1] = max(cuts[-1][1], end)
                else:
                    cuts.append([start, end])
            stats[f"decont.{name}.chars_cut"] += sum(e - b for b, e in cuts)
            pieces, prev = [], 0
            for b, e in cuts:
                pieces.append(text[prev:b])
                prev = e
            text = "".join(pieces) + text[prev:]
        else:
            ws = words(text)
            found = self.matches(ws)
            if found:
                return self._reason(doc, ws, found[0][0], found[0][1])
        if first is None:
            return None
        if not words(text):
            doc.meta[DETAIL_KEY] = "no words left after cutting"
            return f"decont.{first}"
        stats[f"decont.{first}.docs_edited"] += 1
        doc.text = text
        return None
