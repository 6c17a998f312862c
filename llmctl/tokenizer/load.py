"""One entry point for a tokenizer directory: llmctl's sentencepiece tokenizer, or a Hugging Face
model's own tokenizer.json (an imported model, llmctl.model.hf_import)."""

from __future__ import annotations

from pathlib import Path

from llmctl.tokenizer.hf import HFTokenizer, is_hf_tokenizer_dir
from llmctl.tokenizer.spm import DESCRIPTION_FILE, Tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer | HFTokenizer:
    """The tokenizer in `path`: llmctl's (tokenizer.model + its description) or a Hugging Face tokenizer.json."""
    if is_hf_tokenizer_dir(path, DESCRIPTION_FILE):
        return HFTokenizer(path)
    return Tokenizer.load(path)
