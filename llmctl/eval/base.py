"""What eval tasks share: the result row schema, per-item samples, standard errors, input readers
and lineage records. Everything here is independent of the model backend (`llmctl.eval.lm`)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from llmctl.errors import UsageError
from llmctl.model.checkpoint import resolve_checkpoint
from llmctl.model.hf_import import is_hf_dir
from llmctl.store.dataset import Dataset, fingerprint_file

# One row per (task, metric): `stderr` is null where none is defined, `n` counts what the metric
# averages over (items, tokens or bytes).
RESULT_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("stderr", pa.float64()),
        ("n", pa.int64()),
    ]
)


@dataclass
class Samples:
    """A task's per-item rows and their schema."""

    schema: pa.Schema
    rows: list[dict[str, Any]]


def mean_stderr(xs: list[float]) -> float:
    """Standard error of the mean: sample standard deviation / sqrt(n); NaN for fewer than 2 values."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1) / n)


def read_jsonl(path: str | Path, limit: int = 0) -> list[dict[str, Any]]:
    """The objects of a JSONL file, blank lines skipped, at most `limit` (0 = all)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such JSONL file")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UsageError(f"{p}:{i + 1}: not a JSON object") from None
        if limit and len(rows) >= limit:
            break
    return rows


def file_lineage(path: str | Path) -> dict[str, Any]:
    """The lineage record of a raw input file: its path and content fingerprint."""
    p = Path(path)
    return {"path": str(p.resolve()), "stage": "file", "fingerprint": fingerprint_file(p)}


def read_prompts(path: str | Path, limit: int = 0) -> tuple[list[str], dict[str, Any]]:
    """The instruction, prompt or question of each row of a JSONL file (at most `limit`), and its lineage."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such prompts file")
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            key = next((k for k in ("instruction", "prompt", "question") if k in rec), None)
            if key is None or not isinstance(rec[key], str):
                raise UsageError(f"{p}: rows need a string instruction, prompt or question")
            out.append(rec[key])
        if limit and len(out) >= limit:
            break
    return out, file_lineage(p)


def chat_answers(
    lm: Any,
    prompts: list[str],
    *,
    task: str,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 1,
    progress: Any = None,
) -> list[str]:
    """The model's replies to each prompt as one user turn of its chat template (prompt i sampled
    with seed + i, so a reply does not depend on the batch); a model without a chat template is a
    UsageError naming `task`."""
    if lm.codec.chat is None:
        raise UsageError(f"{lm.name}: its tokenizer has no chat template; {task} needs chat models")
    outs = lm.generate_many(
        [lm.codec.chat([{"role": "user", "content": p}]) for p in prompts],
        max_new_tokens,
        temperature=temperature,
        seeds=[seed + i for i in range(len(prompts))],
        batch_size=batch_size,
        on_batch=(lambda n, t: progress.advance(n, t)) if progress else None,
    )
    return [lm.codec.decode(ids).strip() for ids in outs]


def model_lineage(path: str | Path, stage: str = "model") -> dict[str, Any]:
    """Path and weights fingerprint of a model directory (an llmctl run dir: its latest checkpoint)."""
    p = Path(path) if is_hf_dir(path) else resolve_checkpoint(path)
    w = sorted(p.glob("*.safetensors"))
    return {"path": str(p.resolve()), "stage": stage, "fingerprint": fingerprint_file(w[0]) if w else ""}


def path_lineage(path: str | Path) -> dict[str, Any]:
    """The lineage record of any input path: a file's content fingerprint, a dataset's fingerprint,
    a model's weights, or for another directory the fingerprints of all its (non-hidden) files."""
    p = Path(path)
    if p.is_file():
        return file_lineage(p)
    if Dataset.is_dataset(p):
        try:
            return Dataset.open(p).lineage()
        except UsageError:  # an unfinished or damaged dataset: fingerprint its files
            pass
    if is_hf_dir(p) or (p / "config.json").is_file() or (p / "checkpoints").is_dir():
        try:
            return model_lineage(p)
        except UsageError:
            pass
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file() and not any(part.startswith(".") for part in x.parts)):
        h.update(f"{f.relative_to(p)}\0{fingerprint_file(f)}\n".encode())
    return {"path": str(p.resolve()), "stage": "directory", "fingerprint": h.hexdigest()}
