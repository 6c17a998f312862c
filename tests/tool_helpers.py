"""Tool-call fixtures shared by the tokenizer and rl tool tests: a Qwen2.5-style tokenizer directory
(trained here, nothing downloaded) with TRL's shipped chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenize_helpers import tinystories_docs
from tokenizers import Tokenizer as HFTok
from tokenizers import decoders, models, pre_tokenizers, trainers

TEXTS = [d[:400] for d in tinystories_docs()[:300]] + ["What is 47 times 86? calculator 47*86 #### 4042"] * 20


def call(expr: str, name: str = "calculator") -> dict:
    return {"type": "function", "function": {"name": name, "arguments": {"expression": expr}}}


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def qwen_dir(tmp: Path, template: str) -> Path:
    transformers = pytest.importorskip("transformers")
    t = HFTok(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=QWEN_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    t.train_from_iterator(TEXTS[:50] + [json.dumps(call("47*86")["function"])] * 20, trainer)
    t.add_tokens(["<tool_call>", "</tool_call>"])  # Qwen2.5: added tokens that are not special
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=template
    )
    fast.save_pretrained(tmp)
    return tmp


def trl_template(name: str) -> str:
    trl = pytest.importorskip("trl")
    src = Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja"
    if not src.is_file():
        pytest.skip(f"this TRL has no {src.name}")
    return src.read_text()
