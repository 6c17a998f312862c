"""What the pretraining stages share: a token dataset opened and checked, one split of it as a flat array."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset


def open_tokens(path: Any, tok: Any = None) -> Dataset:
    """A `tokens` dataset whose `input_ids` are lists of integers and, when `tok` is given and the
    manifest records its tokenizer, made with `tok` (by fingerprint: another tokenizer of the same
    vocabulary size is refused too); a one-line `UsageError` otherwise."""
    ds = Dataset.open(path, stage="tokens", columns=["input_ids", "split"])
    ds.check_int_lists("input_ids")
    made = ds.recorded_input("tokenizer")
    if tok is not None and made is not None and made.get("fingerprint") != tok.fingerprint:
        raise UsageError(
            f"{ds.path}: was tokenized with {made.get('path')}, not with {tok.path} (another tokenizer: "
            "its ids mean other tokens); pass the tokenizer it was made with, or re-encode"
        )
    return ds


def load_token_split(ds: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """All documents of one split: (flat int32 ids, offsets) in dataset order."""
    flats, lengths = [], []
    for batch in ds.iter_batches(["input_ids", "split"], batch_size=8192):
        sel = batch.filter(pc.equal(batch.column("split"), split))
        col = sel.column("input_ids")
        if len(col) == 0:
            continue
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        flats.append(col.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False))
        lengths.append(pc.list_value_length(col).to_numpy(zero_copy_only=False))
    if not flats:
        return np.zeros(0, np.int32), np.zeros(1, np.int64)
    lens = np.concatenate(lengths).astype(np.int64)
    return np.concatenate(flats), np.concatenate([[0], np.cumsum(lens)])
