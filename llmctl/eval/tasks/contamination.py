"""Test/train contamination: the share of eval items with an n-gram (13 by default) that also occurs
in a training dataset.

Both sides are lower-cased and split into `\\w+` words (llmctl.data.ngrams, shared with
`filter --decontaminate`). The eval items' n-grams are held in memory; the training dataset is
streamed batch by batch, so memory does not grow with it. An item shorter than n words cannot be
checked: it is counted in `too_short_items` and left out of the share.
Eval data: MMLU-layout CSV or directory, or JSONL (`fields`); training data: a dataset with `text`,
or a token dataset (decoded with the model's tokenizer or `contamination.tokenizer`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmctl.data.ngrams import grams, words
from llmctl.errors import UsageError
from llmctl.eval.base import file_lineage, read_jsonl
from llmctl.eval.tasks.mc import MCConfig, data_files, read_items
from llmctl.store.dataset import Dataset
from llmctl.tokenizer.spm import Tokenizer

TASK = "contamination"


@dataclass
class ContaminationConfig:
    train: str = ""  # training dataset (text column, or input_ids + a tokenizer)
    data: str = ""  # eval items (--items): MMLU CSV/dir or JSONL
    fields: list[str] = field(default_factory=lambda: ["question"])  # JSONL fields that make an item's text
    n: int = 13
    limit: int = 0  # eval items (0 = all)
    tokenizer: str = ""  # to decode a token dataset when no model is loaded


def eval_items(cfg: ContaminationConfig) -> tuple[list[str], list[dict[str, Any]]]:
    p = Path(cfg.data)
    files = data_files(MCConfig(data=cfg.data)) if p.is_dir() else [p]
    items: list[str] = []
    for f in files:
        if f.suffix == ".csv":
            items += [" ".join([it["question"], *it["choices"]]) for it in read_items(f)]
        elif f.suffix in (".jsonl", ".json"):
            items += [" ".join(str(r.get(k, "")) for k in cfg.fields) for r in read_jsonl(f)]
        else:
            raise UsageError(f"{f}: contamination data must be .csv or .jsonl")
    if cfg.limit:
        items = items[: cfg.limit]
    lineage = [file_lineage(f) for f in files]
    return items, lineage


def find_contaminated(
    items: list[str], train_texts: Iterable[str], n: int, on_batch: Any = None
) -> tuple[set[int], int, int]:
    """(indices of items with an n-gram in the training texts, too-short items, training docs read)."""
    index: dict[tuple[str, ...], list[int]] = {}
    short = 0
    for i, t in enumerate(items):
        ws = words(t)
        if len(ws) < n:
            short += 1
        for g in grams(ws, n):
            index.setdefault(g, []).append(i)
    keys = index.keys()
    hit: set[int] = set()
    docs = 0
    for text in train_texts:
        docs += 1
        for g in set(grams(words(text), n)) & keys:
            hit.update(index[g])
        if on_batch and docs % 1000 == 0:
            on_batch(1000, 0)
    return hit, short, docs


def _train_texts(ds: Any, decode: Any) -> Iterable[str]:
    col = "text" if "text" in ds.column_names else "input_ids"
    for batch in ds.iter_batches([col], batch_size=1024):
        for v in batch.column(0).to_pylist():
            if v:
                yield v if col == "text" else decode(v)


def run(
    lm: Any, cfg: ContaminationConfig, batch_size: int, progress: Any = None, *, model: str = "", device: str = "cpu"
) -> tuple[list[dict[str, Any]], list]:
    if not cfg.train:
        raise UsageError("contamination needs a training dataset: --train-data DIR")
    if cfg.n < 1:
        raise UsageError("contamination.n must be >= 1")
    ds = Dataset.open(cfg.train)
    decode = None
    if "text" not in ds.column_names:
        if "input_ids" not in ds.column_names:
            raise UsageError(f"{cfg.train}: has neither a text nor an input_ids column")
        if cfg.tokenizer:
            decode = Tokenizer.load(cfg.tokenizer).decode
        elif lm is not None:
            decode = lm.codec.decode
        else:
            raise UsageError(f"{cfg.train}: is a token dataset; pass contamination.tokenizer to decode it")
    items, lineage = eval_items(cfg)
    if not items:
        raise UsageError(f"{cfg.data}: no eval items")
    if progress:
        progress.start(TASK, ds.num_rows)
    hit, short, docs = find_contaminated(items, _train_texts(ds, decode), cfg.n, progress.advance if progress else None)
    if progress:
        progress.advance(docs % 1000)
    checked = len(items) - short
    return [
        {
            "task": TASK,
            "metric": f"contaminated_{cfg.n}gram",
            "value": len(hit) / checked if checked else 0.0,
            "stderr": None,
            "n": checked,
        },
        {"task": TASK, "metric": "contaminated_items", "value": float(len(hit)), "stderr": None, "n": checked},
        {"task": TASK, "metric": "too_short_items", "value": float(short), "stderr": None, "n": len(items)},
        {"task": TASK, "metric": "train_documents", "value": float(docs), "stderr": None, "n": docs},
    ], lineage + [ds.lineage()]
