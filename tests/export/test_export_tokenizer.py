"""The export's tokenizer.json gives llmctl's ids in transformers, without protobuf or sentencepiece.

`llmctl.export.hf_tokenizer` writes the sentencepiece BPE as a `tokenizers` BPE with byte fallback. These
tests compare ids with llmctl's own tokenizer on text that trips converters (literal "▁", special
token strings typed in text, control characters, NUL, emoji, digits, runs of spaces, random
strings over an alphabet of such characters) and load the export in a subprocess where
`google.protobuf` and `sentencepiece` cannot be imported. (benchmarks/export_plain_env.py does
the same in a fresh virtualenv with only transformers, tokenizers and torch.)
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
from pretrain_helpers import make_tokenizer, stories
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llmctl.export.hf import export_hf
from llmctl.model.checkpoint import save_checkpoint
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.tokenizer.base import TOOL_TOKENS

TRICKY = [
    "Hello  world\n\n  x",
    "a ▁ b ▁▁c▁",
    "say <|user|> now<|end|><|assistant|>",
    "<|eos|>",
    "<0x41> <unk>",
    "café 日本語 🤖 \x00\x01\x1f\x7f",
    "12345 3.14 -7",
    "   ",
    "\t\ttab\r\n",
    "x\u2581",
    "\ufffd",
    "",
    " leading",
    "trailing ",
    "\u00a0nbsp",
    "Ünïcödé ß ﬁ",
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "ab  ▁\n\t<|>/0129éß日🤖\x00\x01."
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    tok = make_tokenizer(d / "tok", vocab_size=1024, docs=1000, tool_tokens=True)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=32, max_seq_len=128)
    torch.manual_seed(0)
    save_checkpoint(d / "ck", Transformer(cfg), cfg, tokenizer_dir=tok.path)
    return tok, export_hf(d / "ck", d / "hf")


def test_tokenizer_json_ids_equal_llmctl(exported):
    tok, hf = exported
    fast = PreTrainedTokenizerFast(tokenizer_file=str(hf / "tokenizer.json"), split_special_tokens=True)
    texts = TRICKY + stories(1300)[1000:] + random_texts(1500)
    for t in texts:
        ids = tok.encode(t)
        assert fast.encode(t, add_special_tokens=False) == ids, repr(t)
        assert fast.decode(ids) == t == tok.decode(ids), repr(t)


def test_literal_meta_and_typed_special_tokens_are_text(exported):
    tok, hf = exported
    at = AutoTokenizer.from_pretrained(hf)
    assert at("a ▁ b")["input_ids"] == tok.encode("a ▁ b")
    assert at.decode(at("a ▁ b")["input_ids"]) == "a ▁ b"
    meta_bytes = [tok.piece_to_id(f"<0x{b:02X}>") for b in "▁".encode()]
    assert tok.encode("▁") == meta_bytes == at.encode("▁")  # three byte tokens, not a space
    ids = at("hi <|user|> there")["input_ids"]
    assert ids == tok.encode("hi <|user|> there") and tok.special_ids["<|user|>"] not in ids
    assert (at.eos_token_id, at.pad_token_id, at.bos_token_id) == (tok.eos_id, tok.pad_id, tok.bos_id)
    assert at.convert_tokens_to_ids("<|end|>") == tok.special_ids["<|end|>"]
    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(hf)  # `generate` stops at the end of a chat turn, as llmctl does
    assert gen.eos_token_id[0] == tok.eos_id and set(gen.eos_token_id) == set(tok.stop_ids)


def test_chat_template_gives_llmctl_chat_ids(exported):
    tok, hf = exported
    at = AutoTokenizer.from_pretrained(hf)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 2 ▁?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3?"},
    ]
    want = tok.apply_chat_template(msgs, add_generation_prompt=True)
    got = at.apply_chat_template(msgs, add_generation_prompt=True, tokenizer_kwargs={"split_special_tokens": False})
    assert list(got["input_ids"] if hasattr(got, "keys") else got) == want
    # llmctl's own Hugging Face loader also keeps a marker typed inside a message as text
    from llmctl.eval.lm import HFLM

    lm = HFLM(hf)
    typed = [{"role": "user", "content": "hi <|assistant|> there"}]
    assert lm.codec.chat(typed) == tok.apply_chat_template(typed, add_generation_prompt=True)
    assert lm.codec.encode("x <|end|>") == tok.encode("x <|end|>")


def test_no_split_special_tokens_is_the_hugging_face_behaviour(exported, tmp_path):
    tok, hf = exported
    ck = json.loads((hf / "_manifest.json").read_text())["inputs"][0]["path"]
    other = export_hf(ck, tmp_path / "hf2", split_special_tokens=False)
    at = AutoTokenizer.from_pretrained(other)
    assert tok.special_ids["<|user|>"] in at("hi <|user|>")["input_ids"]
    assert at("plain text")["input_ids"] == tok.encode("plain text")


BLOCK = """
import builtins, json, sys
real = builtins.__import__
def guard(name, *a, **k):
    if name.split(".")[0] in ("sentencepiece", "tiktoken") or name.startswith("google.protobuf"):
        raise ImportError(f"blocked: {name}")
    return real(name, *a, **k)
builtins.__import__ = guard
for m in [m for m in sys.modules if m.startswith(("google.protobuf", "sentencepiece"))]:
    del sys.modules[m]
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained(sys.argv[1])
print(json.dumps([t.encode(x, add_special_tokens=False) for x in json.loads(sys.argv[2])]))
"""


@pytest.mark.slow
def test_export_loads_without_protobuf_or_sentencepiece(exported):
    tok, hf = exported
    texts = TRICKY + stories(20)
    r = subprocess.run(
        [sys.executable, "-c", BLOCK, str(hf), json.dumps(texts)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [tok.encode(t) for t in texts]


def test_tool_call_tokens_are_special_in_transformers(exported):
    """The tool-call control tokens export as special tokens: one id each, dropped by
    skip_special_tokens, as the chat tokens."""
    tok, out = exported
    hf = AutoTokenizer.from_pretrained(out)
    assert set(TOOL_TOKENS) <= set(hf.all_special_tokens)
    ids = [tok.special_ids[TOOL_TOKENS[0]], *tok.encode("12*34"), tok.special_ids[TOOL_TOKENS[1]]]
    assert hf.convert_ids_to_tokens(ids[:1]) == [TOOL_TOKENS[0]]
    assert hf.decode(ids, skip_special_tokens=True) == tok.decode(tok.encode("12*34"))
