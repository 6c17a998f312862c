"""Shared set-up for the sft / reward / dpo / chat_data tests: a throwaway tokenizer and tiny checkpoint.

The tokenizer is trained in the test (hermetic) on the GSM8K excerpt in tests/fixtures; built once
per test process and reused (about 1 s).
"""

from __future__ import annotations

import functools
import json
import random
import tempfile
from pathlib import Path

import torch

from llmctl.model.checkpoint import save_checkpoint
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.tokenizer.spm import Tokenizer

DATA = Path(__file__).parent / "fixtures"
GSM8K = DATA / "gsm8k_train_head120.jsonl"  # see tests/fixtures/README.md
HH = DATA / "hh_rlhf_harmless_base_test_head40.jsonl"


@functools.lru_cache(maxsize=1)
def tokenizer() -> Tokenizer:
    texts = []
    for line in GSM8K.read_text().splitlines():
        r = json.loads(line)
        texts += [r["question"], r["answer"]]
    texts += [" ".join(p) for p in synthetic_words()]
    tok = Tokenizer.train(texts, vocab_size=400)
    tok.save(Path(tempfile.mkdtemp(prefix="align-tok-")))
    return tok


def tiny_checkpoint(path: Path, seed: int = 0, **kw) -> Path:
    tok = tokenizer()
    cfg = ModelConfig(vocab_size=tok.vocab_size, **{**dict(n_layer=2, n_head=2, d_model=32, max_seq_len=512), **kw})
    torch.manual_seed(seed)
    save_checkpoint(path, Transformer(cfg), cfg, tok.path)
    return path


def synthetic_words() -> list[tuple[str, ...]]:
    return [("kind", "helpful", "polite", "glad"), ("rude", "stupid", "angry", "awful")]


def synthetic_prefs(n: int, seed: int = 0) -> list[dict]:
    """Pairs a tiny model can learn: the chosen reply uses kind words, the rejected one rude words."""
    rng = random.Random(seed)
    good, bad = synthetic_words()
    topics = ["cats", "rain", "bread", "trains", "math", "music", "boats", "snow", "tea", "maps"]
    rows = []
    for i in range(n):
        t = rng.choice(topics)
        k = rng.randint(2, 4)
        rows.append(
            {
                "prompt": f"Tell me about {t} number {i}.",
                "chosen": " ".join(rng.choice(good) for _ in range(k)) + f" {t}.",
                "rejected": " ".join(rng.choice(bad) for _ in range(k)) + f" {t}.",
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
