"""What the pretraining stages share: one split of a token dataset as a flat array."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmctl.store.dataset import Dataset


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
