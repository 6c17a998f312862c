"""The tokenizer: training on real text, exact round trip, special tokens, files, HF parity, chat format."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenize_helpers import tinystories_docs

from llmctl.errors import UsageError
from llmctl.tokenizer.base import TOOL_TOKENS
from llmctl.tokenizer.chat import encode_chat, render_chat
from llmctl.tokenizer.spm import CHAT_TOKENS, SPECIAL_TOKENS, Tokenizer, training_chunks

DOCS = tinystories_docs()
TRAIN, HELD_OUT = DOCS[:-200], DOCS[-200:]

EDGE_CASES = [
    "",
    " ",
    "  two  spaces  ",
    "\n",
    "\n\nline\r\nbreaks\r",
    "\t tabs\t",
    "\x00NUL\x01\x1f\x7f",
    "emoji 🎉👩‍👩‍👧 flags 🇫🇷",
    "日本語のテキストと中文",
    "한국어 Ελληνικά русский עברית العربية",
    "combining e\u0301 and NFKC ﬁ ① ｆｕｌｌ",
    "\u2581 sentencepiece's own space marker \u2581\u2581x\u2581",
    "digits 1234567890 and 3.14159",
    "<|user|> <|eos|> <unk> <s> </s> typed by a user",
    "\ufeffBOM",
    "\ufffd",
    "zero\u200bwidth",
    "x" * 5000,
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train((c for d in TRAIN for c in training_chunks(d)), 512)


@pytest.fixture(scope="module")
def tok_dir(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok.save(d)
    return d


def test_train_on_real_text_compresses_held_out_text(tok):
    assert tok.vocab_size == 512
    assert [tok.special_ids[t] for t in SPECIAL_TOKENS] == list(range(1, 8))
    assert [tok.special_ids[t] for t in TOOL_TOKENS] == list(range(8, 12))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    pieces = {tok.id_to_piece(i) for i in range(tok.vocab_size)}
    assert {"▁the", "▁and", "<0x00>", "<0xFF>"} <= pieces
    text = "\n".join(HELD_OUT)
    ids = tok.encode(text)
    # 512 tokens (268 of them special or byte tokens) on TinyStories: 2.09 bytes/token; raw bytes are 1.0.
    assert len(text.encode()) / len(ids) > 2.0
    assert tok.unk_id not in ids


def test_training_is_deterministic(tok):
    again = Tokenizer.train((c for d in TRAIN for c in training_chunks(d)), 512, num_threads=2)
    assert again.fingerprint == tok.fingerprint


@pytest.mark.parametrize("text", EDGE_CASES)
def test_round_trip_edge_cases(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert not any(tok.is_special(i) for i in ids)
    assert tok.unk_id not in ids


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=200))
def test_round_trip_any_text(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert not any(tok.is_special(i) for i in ids)
    assert tok.encode_batch([text, "a"]) == [ids, tok.encode("a")]


def test_lone_surrogates_become_replacement_characters(tok):
    text = "a\ud800b\udfffc"
    assert tok.decode(tok.encode(text)) == "a\ufffdb\ufffdc"
    assert tok.encode_batch([text])[0] == tok.encode("a\ufffdb\ufffdc")


def test_special_token_text_is_ordinary_text(tok):
    for name in SPECIAL_TOKENS:
        ids = tok.encode(f"hi {name} there")
        assert tok.special_ids[name] not in ids
        assert len(ids) > 3
    assert tok.encode("Once upon a time")[0] != tok.bos_id  # nothing added
    assert tok.decode([tok.bos_id, *tok.encode("Hi"), tok.eos_id]) == "Hi"
    assert tok.decode([tok.special_ids["<|user|>"], *tok.encode("Hi")], skip_special=False) == "<|user|>Hi"


def test_training_chunks_cut_long_documents_losslessly():
    doc = ("word " * 3000 + "\n") * 3 + "y" * 9000
    chunks = list(training_chunks(doc, max_chars=4096))
    assert "".join(chunks) == doc
    assert max(len(c) for c in chunks) <= 4096 and len(chunks) >= 9


def test_vocab_too_small_is_a_usage_error():
    with pytest.raises(UsageError, match="too small"):
        Tokenizer.train(["some text"], 100)


def test_save_load_round_trip(tok, tok_dir):
    loaded = Tokenizer.load(tok_dir)
    assert loaded.fingerprint == tok.fingerprint
    assert loaded.special_ids == tok.special_ids
    assert loaded.encode(HELD_OUT[0]) == tok.encode(HELD_OUT[0])
    info = json.loads((tok_dir / "llmctl_tokenizer.json").read_text())
    assert info["vocab_size"] == 512 and info["special_tokens"]["<|eos|>"] == 2


def test_load_errors(tmp_path, tok_dir):
    with pytest.raises(UsageError, match="no such tokenizer"):
        Tokenizer.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not an llmctl tokenizer"):
        Tokenizer.load(tmp_path / "empty")
    bad = tmp_path / "bad"
    shutil.copytree(tok_dir, bad)
    (bad / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(UsageError):
        Tokenizer.load(bad)
    other = Tokenizer.train(TRAIN[:300], 400)
    mixed = tmp_path / "mixed"
    shutil.copytree(tok_dir, mixed)
    (mixed / "tokenizer.model").write_bytes(other._proto)
    with pytest.raises(UsageError, match="does not match"):
        Tokenizer.load(mixed)


# ---------------------------------------------------------------- chat format


def test_chat_template_inserts_special_ids(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi <|assistant|> ok"},
        {"role": "assistant", "content": "Hello."},
    ]
    ids, mask = encode_chat(tok, msgs, add_generation_prompt=False)
    s = tok.special_ids
    expected = (
        [s["<|system|>"], *tok.encode("Be brief."), s["<|end|>"]]
        + [s["<|user|>"], *tok.encode("Hi <|assistant|> ok"), s["<|end|>"]]
        + [s["<|assistant|>"], *tok.encode("Hello."), s["<|end|>"]]
    )
    assert ids == expected == tok.apply_chat_template(msgs)
    assert ids.count(s["<|assistant|>"]) == 1  # the user's literal "<|assistant|>" stayed text
    n_assistant = len(tok.encode("Hello.")) + 1
    assert mask == [False] * (len(ids) - n_assistant) + [True] * n_assistant
    gen = tok.apply_chat_template(msgs[:2], add_generation_prompt=True)
    assert gen == expected[: len(gen) - 1] + [s["<|assistant|>"]]
    assert tok.decode(ids, skip_special=False) == render_chat(msgs)
    assert set(tok.stop_ids) == {s["<|end|>"], tok.eos_id}


@pytest.mark.parametrize(
    "bad", [[{"role": "bot", "content": "x"}], [{"content": "x"}], "hello", [{"role": "user", "content": 3}]]
)
def test_chat_template_rejects_bad_messages(tok, bad):
    with pytest.raises(UsageError):
        tok.apply_chat_template(bad)


# ---------------------------------------------------------------- Hugging Face parity


HF_TEXTS = [
    "Once upon a time, there was a little girl named Lily.",
    "She  had 12 red balloons!\nThe end.\n",
    " leading and trailing space ",
    "日本語 🎉 tab\tx",
    "Ελληνικά and ﬁ ligature",
]


@pytest.mark.parametrize("cls_name", ["LlamaTokenizer", "LlamaTokenizerFast", "AutoTokenizer"])
def test_loads_as_hugging_face_tokenizer_with_same_ids(tok, tok_dir, cls_name):
    import transformers  # a test dependency (.[test]): this check must run, not skip

    hf = getattr(transformers, cls_name).from_pretrained(str(tok_dir))
    assert len(hf) == tok.vocab_size
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert hf.convert_tokens_to_ids(list(CHAT_TOKENS)) == [tok.special_ids[t] for t in CHAT_TOKENS]
    for text in HF_TEXTS + HELD_OUT[:20]:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, text
        assert hf.encode(text) == ids  # no BOS added by default, as in llmctl
        assert hf.decode(ids) == text
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."},
    ]
    hf_ids = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False)
    hf_ids = hf_ids["input_ids"] if not isinstance(hf_ids, list) else hf_ids
    assert list(hf_ids) == tok.apply_chat_template(msgs)


def test_split_digits_is_recorded_and_changes_numbers(tok):
    assert tok.describe()["split_digits"] is True
    assert [tok.id_to_piece(i) for i in tok.encode("2024")] == ["2", "0", "2", "4"]
    texts = [f"In {1900 + i % 120} there were {i * 37} cats and 100 dogs." for i in range(3000)]
    joined = Tokenizer.train(texts, 400, split_digits=False)
    assert joined.describe()["split_digits"] is False
    assert len(joined.encode("100 dogs")) < len(tok.encode("100 dogs"))
