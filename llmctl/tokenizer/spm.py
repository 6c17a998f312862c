"""The llmctl tokenizer: a sentencepiece BPE model with byte fallback and reserved special tokens.

A tokenizer directory holds `tokenizer.model` (the sentencepiece model, also what Hugging Face's
LlamaTokenizer reads), `llmctl_tokenizer.json` (vocab size, special tokens and options; written
last by `save()`), `tokenizer_config.json` and `special_tokens_map.json` (for
`transformers.AutoTokenizer`: no BOS, no prefix space, the chat template of llmctl.tokenizer.base)
and `_manifest.json` (lineage and stats, written by `llmctl tokenize train`). Guarantees:
`decode(encode(t)) == t` for every string of Unicode scalar values (identity normalization, byte
fallback; "\u2581" is encoded as its bytes, a lone surrogate becomes U+FFFD); special tokens are
control symbols that encoding text never produces (the chat and tool-call markers, ids 1..11;
a tokenizer trained before the tool markers has ids 1..7 and writes tool calls as text, see
llmctl.tokenizer.base); digits are split one per token by default
(docs/tokenize.md); newlines are never merged.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from llmctl.errors import UsageError
from llmctl.store import fs
from llmctl.store.dataset import atomic_write_json
from llmctl.tokenizer.base import (
    ASSISTANT,
    BOS,
    CHAT_TOKENS,
    END,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    SYSTEM,
    TOOL_TOKENS,
    UNK,
    USER,
    chat_template_jinja,
    encode_chat,
)

MODEL_FILE = "tokenizer.model"
DESCRIPTION_FILE = "llmctl_tokenizer.json"
FORMAT = "llmctl-sentencepiece-bpe-v1"


_META = "\u2581"  # sentencepiece's whitespace marker
_META_BYTES = tuple(f"<0x{b:02X}>" for b in _META.encode("utf-8"))
_SURROGATE = re.compile("[\ud800-\udfff]")
# Characters always in the vocabulary, however rare in the sample (else they fall back to bytes).
REQUIRED_CHARS = "".join(chr(c) for c in range(0x21, 0x7F)) + "\n\t"  # space is "▁", always in


def scrub_surrogates(text: str) -> str:
    """Replace lone surrogate code points (not encodable as UTF-8) with U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


class Tokenizer:
    """A loaded sentencepiece BPE model plus llmctl's special-token conventions."""

    def __init__(self, model_proto: bytes, path: Path | None = None):
        self._proto = model_proto
        self.path = path
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        sp = self._sp
        self.vocab_size: int = sp.get_piece_size()
        self.special_ids: dict[str, int] = {}
        for tok in SPECIAL_TOKENS:
            i = sp.piece_to_id(tok)
            if sp.id_to_piece(i) != tok or not sp.is_control(i):
                raise UsageError(f"{path or 'tokenizer'}: special token {tok} is missing (not an llmctl tokenizer)")
            self.special_ids[tok] = i
        for tok in TOOL_TOKENS:  # optional: a tokenizer trained before they existed has none (text markers)
            i = sp.piece_to_id(tok)
            if sp.id_to_piece(i) == tok and sp.is_control(i):
                self.special_ids[tok] = i
        self.bos_id, self.eos_id, self.pad_id = (self.special_ids[t] for t in (BOS, EOS, PAD))
        self.unk_id: int = sp.unk_id()
        self._meta_ids = [sp.piece_to_id(p) for p in _META_BYTES]
        self._special_set = frozenset(self.special_ids.values())

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        character_coverage: float = 0.9995,
        max_piece_length: int = 16,
        split_digits: bool = True,
        num_threads: int = 1,
        max_sentence_bytes: int = 1 << 16,
        tool_tokens: bool = True,
    ) -> Tokenizer:
        """Train a BPE model on `texts` (each a training "sentence"; see `training_chunks`); with
        `tool_tokens=False`, without the tool-call markers (tool calls are then written as text)."""
        tools = TOOL_TOKENS if tool_tokens else ()
        n_special = 1 + len(SPECIAL_TOKENS) + len(tools)
        min_vocab = n_special + 256 + len(REQUIRED_CHARS)
        if vocab_size < min_vocab:
            raise UsageError(
                f"--vocab-size {vocab_size} is too small: needs at least {min_vocab} "
                f"({n_special} special, 256 byte and {len(REQUIRED_CHARS)} ASCII tokens)"
            )
        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=(scrub_surrogates(t) for t in texts if t),
                model_writer=writer,
                model_type="bpe",
                vocab_size=vocab_size,
                byte_fallback=True,
                split_digits=split_digits,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,
                character_coverage=character_coverage,
                required_chars=REQUIRED_CHARS,
                max_sentencepiece_length=max_piece_length,
                max_sentence_length=max_sentence_bytes,
                input_sentence_size=0,
                shuffle_input_sentence=False,
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=3,
                unk_piece=UNK,
                bos_piece=BOS,
                eos_piece=EOS,
                pad_piece=PAD,
                control_symbols=list(CHAT_TOKENS + tools),
                num_threads=max(1, num_threads),
                minloglevel=2,
            )
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
            raise UsageError(f"sentencepiece could not train a {vocab_size}-token vocabulary: {msg}") from None
        return cls(_drop_thread_count(writer.getvalue()))

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer directory (local or a URI); a one-line `UsageError` if it is not one."""
        p = fs.to_path(path)
        if not p.is_dir():
            raise UsageError(f"{p}: no such tokenizer directory")
        model, desc = p / MODEL_FILE, p / DESCRIPTION_FILE
        if not model.is_file() or not desc.is_file():
            raise UsageError(
                f"{p}: not an llmctl tokenizer (needs {MODEL_FILE} and {DESCRIPTION_FILE}; "
                "make one with `llmctl tokenize train`)"
            )
        try:
            info = json.loads(desc.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{desc}: unreadable ({e})") from None
        if info.get("format") != FORMAT:
            raise UsageError(f"{desc}: unknown tokenizer format {info.get('format')!r} (expected {FORMAT})")
        try:
            tok = cls(model.read_bytes(), path=p)
        except (RuntimeError, OSError) as e:
            raise UsageError(f"{model}: not a sentencepiece model ({str(e).strip().splitlines()[-1]})") from None
        if tok.vocab_size != info.get("vocab_size") or tok.fingerprint != info.get("model_sha256"):
            raise UsageError(f"{p}: {MODEL_FILE} does not match {DESCRIPTION_FILE} (files mixed from two tokenizers?)")
        return tok

    def save(self, path: str | Path) -> None:
        """Write the model, the Hugging Face files, then the description (the completion marker)."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / DESCRIPTION_FILE).unlink(missing_ok=True)
        (p / MODEL_FILE).write_bytes(self._proto)
        specials = {
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": UNK,
            "additional_special_tokens": [*CHAT_TOKENS, *(t for t in TOOL_TOKENS if t in self.special_ids)],
        }
        atomic_write_json(p / "special_tokens_map.json", specials)
        atomic_write_json(
            p / "tokenizer_config.json",
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": False,
                "add_eos_token": False,
                "add_prefix_space": False,
                "legacy": False,
                "clean_up_tokenization_spaces": False,
                "model_max_length": 1_000_000_000,
                "chat_template": chat_template_jinja(TOOL_TOKENS[0] in self.special_ids),
                **specials,
            },
        )
        atomic_write_json(p / DESCRIPTION_FILE, self.describe())
        self.path = p

    def describe(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": MODEL_FILE,
            "model_sha256": self.fingerprint,
            "vocab_size": self.vocab_size,
            "special_tokens": dict(self.special_ids),
            "unk_id": self.unk_id,
            "byte_fallback": True,
            "split_digits": self._sp_split_digits(),
            "normalization": "identity",
            "chat_template": "llmctl-v1",
        }

    def _sp_split_digits(self) -> bool:
        return _trainer_flag(self._proto, 25)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self._proto).hexdigest()

    def lineage(self) -> dict[str, Any]:
        """How a stage that uses this tokenizer records it among its inputs."""
        return {
            "path": fs.display(self.path) if self.path else None,
            "stage": "tokenizer",
            "fingerprint": self.fingerprint,
        }

    # ------------------------------------------------------------------ encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no BOS/EOS is added and no special id can come out of text."""
        if _META in text:
            return self._encode_with_meta(text)
        try:
            return self._sp.encode(text)
        except (RuntimeError, TypeError):
            if not isinstance(text, str):
                raise TypeError(f"encode() expects str, got {type(text).__name__}") from None
            return self.encode(scrub_surrogates(text))

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """`encode` over many texts; sentencepiece runs `num_threads` C++ threads (GIL released)."""
        try:
            out = self._sp.encode(list(texts), num_threads=num_threads)
        except (RuntimeError, TypeError):
            return [self.encode(t) for t in texts]
        for i, t in enumerate(texts):
            if _META in t:
                out[i] = self._encode_with_meta(t)
        return out

    def _encode_with_meta(self, text: str) -> list[int]:
        parts = text.split(_META)
        ids = self.encode(parts[0])
        for part in parts[1:]:
            ids += self._meta_ids
            ids += self.encode(part)
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of `ids`. Special ids decode to nothing, or to their names with `skip_special=False`."""
        ids = [int(i) for i in ids]
        if skip_special or not self._special_set.intersection(ids):
            return self._sp.decode(ids)
        out, run = [], []
        for i in ids:
            if i in self._special_set:
                out.append(self._sp.decode(run) + self._sp.id_to_piece(i))
                run = []
            else:
                run.append(i)
        return "".join(out) + self._sp.decode(run)

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return self._sp.piece_to_id(piece)

    def is_special(self, i: int) -> bool:
        return int(i) in self._special_set

    @property
    def stop_ids(self) -> tuple[int, int]:
        """Ids that end generation: the end of a chat turn and the end of a document."""
        return (self.special_ids[END], self.eos_id)

    # ------------------------------------------------------------------ chat
    def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
        """Ids of a conversation in llmctl's chat format (llmctl.tokenizer.base)."""
        return encode_chat(self, messages, add_generation_prompt)[0]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, path={str(self.path) if self.path else None!r})"


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return value, pos
        shift += 7


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(buf: bytes) -> Iterable[tuple[int, int, bytes]]:
    """Top-level protobuf fields as (number, wire type, raw bytes of the whole field)."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        yield key >> 3, wire, buf[start:pos]


def _trainer_flag(proto: bytes, field: int) -> bool:
    """A boolean of the model's TrainerSpec (ModelProto field 2), read from the protobuf bytes."""
    for num, wire, raw in _fields(proto):
        if num == 2 and wire == 2:
            _, start = _varint(raw, 1)
            for n, w, r in _fields(raw[start:]):
                if n == field and w == 0:
                    return _varint(r, len(_put_varint(field << 3)))[0] != 0
    return False


def _drop_thread_count(proto: bytes) -> bytes:
    """The model with `trainer_spec.num_threads` removed, so the file does not depend on the core count.

    sentencepiece's BPE output is the same for any thread count (checked by a test), but it
    records the count in the model; dropping it (a protobuf field edit, ModelProto.trainer_spec
    = field 2, TrainerSpec.num_threads = field 16) keeps the file byte-identical across machines.
    """
    out = bytearray()
    for num, wire, raw in _fields(proto):
        if num == 2 and wire == 2:
            key_len = len(_put_varint((2 << 3) | 2))
            _, body_start = _varint(raw, key_len)
            body = b"".join(r for n, _, r in _fields(raw[body_start:]) if n != 16)
            raw = _put_varint((2 << 3) | 2) + _put_varint(len(body)) + body
        out += raw
    return bytes(out)


def training_chunks(text: str, max_chars: int = 4096) -> Iterable[str]:
    """Cut a document into training sentences of at most `max_chars`, at line ends where possible.

    sentencepiece silently skips a sentence longer than `max_sentence_length` bytes, so a long
    web page would otherwise be lost; newlines stay inside chunks so "\\n" gets a piece of its own.
    """
    if len(text) <= max_chars:
        yield text
        return
    buf: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:
            if buf:
                yield "".join(buf)
                buf, size = [], 0
            cut = line.rfind(" ", max_chars // 2, max_chars) + 1 or max_chars
            yield line[:cut]
            line = line[cut:]
        if size + len(line) > max_chars and buf:
            yield "".join(buf)
            buf, size = [], 0
        buf.append(line)
        size += len(line)
    if buf:
        yield "".join(buf)


__all__ = [
    "Tokenizer",
    "SPECIAL_TOKENS",
    "CHAT_TOKENS",
    "BOS",
    "EOS",
    "PAD",
    "SYSTEM",
    "USER",
    "ASSISTANT",
    "END",
    "training_chunks",
    "scrub_surrogates",
]
