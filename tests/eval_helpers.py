"""Test helpers for the eval tests: a tiny real tokenizer, tiny checkpoints, small datasets."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from tokenize_helpers import tinystories_docs, write_documents  # noqa: F401  (re-exported)

from llmctl.model.checkpoint import load_checkpoint, save_checkpoint
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.store.dataset import StageOutput
from llmctl.tokenizer.spm import Tokenizer, training_chunks

VOCAB = 512


@functools.lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    docs = tinystories_docs(300)
    return Tokenizer.train((c for d in docs for c in training_chunks(d)), VOCAB)


def save_tokenizer(path: Path) -> Path:
    tokenizer().save(path)
    return path


def tiny_checkpoint(path: Path, tmp: Path, seed: int = 0, uniform: bool = False, **cfg: Any) -> Path:
    """A random tiny model (or, with uniform=True, one whose logits are all 0 = a uniform distribution)."""
    tok_dir = tmp / "tok"
    if not (tok_dir / "llmctl_tokenizer.json").is_file():
        save_tokenizer(tok_dir)
    spec = dict(vocab_size=VOCAB, n_layer=2, n_head=2, d_model=32, max_seq_len=64, tie_embeddings=False)
    spec.update(cfg)
    mc = ModelConfig(**spec)
    torch.manual_seed(seed)
    model = Transformer(mc)
    if uniform:
        torch.nn.init.zeros_(model.lm_head.weight)
    return save_checkpoint(path, model, mc, tokenizer_dir=tok_dir)


class _Cfg:
    __dataclass_fields__: dict = {}


def write_tokens(out: Path, docs: list[list[int]], splits: list[str]) -> Path:
    """A finished token dataset (id, input_ids, split)."""
    schema = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int32())), ("split", pa.string())])
    so = StageOutput(out, "tokens", _Cfg(), inputs=[])
    w = so.shard_writer("part-00000.parquet", schema)
    for i, (ids, s) in enumerate(zip(docs, splits)):
        w.write({"id": f"d{i}", "input_ids": ids, "split": s})
    so.finish_task("part-00000", {"data": [{"path": "part-00000.parquet", **w.close()}]})
    so.finalize(["part-00000"], schema)
    return out


def resave_weights(path: Path, weights: dict[str, torch.Tensor]) -> Path:
    """Write edited weights back into checkpoint PATH through save_checkpoint (which records their checksums)."""
    model, mc, tok_dir, _ = load_checkpoint(path)
    model.load_state_dict(weights)
    tok = path.parent / f".{path.name}-tokenizer"
    shutil.copytree(tok_dir, tok, dirs_exist_ok=True)
    save_checkpoint(path, model, mc, tokenizer_dir=tok)
    shutil.rmtree(tok)
    return path
