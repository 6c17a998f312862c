"""`pretrain --mix FILE`: train on a mixture straight from its sources, without a materialized copy.

The mix file is the one `llmctl mix --config` reads. Its plan (llmctl.data.mix_plan) is computed
here exactly as `llmctl mix` computes it, and each split's documents are gathered from the sources
into one array in the plan's order: what `load_token_split` returns for the materialized mix. The
trainer's PackedBatches then shuffles and packs it as usual, so the token order, the windows and
the data position in the resume state (one integer) are the materialized mix's (tests/data/test_mix.py).

Memory: the mixture's token ids (4 bytes a token, a repeated document counted each time it
appears), as for any pretrain input, plus one source's split while it is gathered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llmctl import config as C
from llmctl.data.mix_plan import MixConfig, Plan, make_plan, open_sources
from llmctl.errors import UsageError
from llmctl.train import distributed as D
from llmctl.train.base import load_token_split


class StreamedMix:
    """A mix file's plan and its sources, read split by split."""

    def __init__(self, path: str | Path):
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"--mix {p}: no such mix file")
        self.path = p
        self.cfg = C.load(MixConfig, p)
        self.plan: Plan = make_plan(self.cfg, open_sources(self.cfg, D.print0), D.print0)

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.plan.sources[0].tokenizer

    def lineage(self) -> list[dict[str, Any]]:
        """The inputs a run records: the mixture (its plan's fingerprint) and every source."""
        return [
            {"path": str(self.path.resolve()), "stage": "mix", "fingerprint": self.plan.fingerprint},
            *(s.ds.lineage() for s in self.plan.sources),
        ]

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(flat int32 ids, offsets) of the split's documents in the plan's order."""
        lengths = self.plan.length[split]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.zeros(int(offsets[-1]), np.int32)
        for i, s in enumerate(self.plan.sources):
            at = np.flatnonzero(self.plan.src[split] == i)
            if not len(at):
                continue
            sflat, soffsets = load_token_split(s.ds, split)
            idx, lens = self.plan.index[split][at], lengths[at]
            # every token of every chosen document: source position -> mixture position
            shift = np.repeat(offsets[at] - soffsets[idx], lens)
            src_pos = (
                np.repeat(soffsets[idx], lens) + np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
            )
            flat[src_pos + shift] = sflat[src_pos]
        return flat, offsets
