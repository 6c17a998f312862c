"""Test helper for the training tests: a throwaway tokenizer and a token dataset from real text.

The tokenizer is trained in the test (hermetic, ~0.3 s) on TinyStories, and the token dataset is
written through the real dataset contract with `StageOutput`, so these tests do not depend on
`llmctl tokenize encode`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from llmctl.store.dataset import StageOutput
from llmctl.tokenizer.spm import Tokenizer

_LOCAL = Path(__file__).parent / "fixtures" / "tinystories_valid_head_300k.txt"  # see data/README.md
TINYSTORIES = _LOCAL
TOKENS_SCHEMA = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int32())), ("split", pa.string())])


def stories(limit: int | None = None) -> list[str]:
    docs = [d.strip() for d in TINYSTORIES.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    return docs[:limit] if limit else docs


def make_tokenizer(out: Path, vocab_size: int = 400, docs: int = 300, tool_tokens: bool = False) -> Tokenizer:
    # Without the tool-call control tokens: the tokenizer (and so the token data) the pretraining and
    # distributed-equality tests were written against. With them, 4 fewer merges give other data, on
    # which the 2x2 tensor-parallel and Muon DDP runs differ from one process by 3e-5 to 7e-5 (relative)
    # after 4-5 steps: float reassociation that training amplifies (docs/parallel.md).
    tok = Tokenizer.train(stories(docs), vocab_size, tool_tokens=tool_tokens)
    tok.save(out)
    return Tokenizer.load(out)


class _Cfg:
    __dataclass_fields__: dict = {}


def write_tokens(out: Path, tok: Tokenizer, docs: int = 200, val_every: int = 10) -> Path:
    """A finished 'tokens' dataset: every val_every-th story goes to the val split."""
    return write_token_rows(out, [tok.encode(text) + [tok.eos_id] for text in stories(docs)], val_every)


def write_token_rows(out: Path, docs: list[list[int]], val_every: int = 10) -> Path:
    so = StageOutput(out, "tokens", _Cfg(), inputs=[])
    w = so.shard_writer("part-00000.parquet", TOKENS_SCHEMA)
    for i, ids in enumerate(docs):
        w.write({"id": f"s{i}", "input_ids": ids, "split": "val" if i % val_every == 0 else "train"})
    so.finish_task("part-00000", {"data": [{"path": "part-00000.parquet", **w.close()}]})
    so.finalize(["part-00000"], TOKENS_SCHEMA)
    return out
