"""llmctl's tokenizer as a Hugging Face `tokenizer.json`: the same ids, no sentencepiece conversion.

`transformers` turns a sentencepiece `tokenizer.model` into a fast tokenizer by parsing its
protobuf, so a directory without `tokenizer.json` needs `protobuf` installed (and without it
fails with a misleading tiktoken error). The export writes `tokenizer.json` itself, from the
pieces and scores sentencepiece reports, so `AutoTokenizer.from_pretrained` (or
`PreTrainedTokenizerFast(tokenizer_file=...)`) needs only `tokenizers`.

The file is a `tokenizers` BPE model with byte fallback, built the way transformers' own
sentencepiece converter builds one (merges: every split of a piece into two pieces, ranked by the
merged piece's score), restricted to ordinary pieces so no merge can produce a special, byte or
unknown id. What differs from transformers' converter, and why:

- The space marker. sentencepiece writes a space as "▁" inside pieces, so a literal "▁" in text
  would become a space; llmctl encodes a literal "▁" as its three byte tokens instead. Here the
  pieces spell the space with U+FDD0, a Unicode *noncharacter* (reserved for internal use, never
  in interchanged text), and the normalizer maps " " to it; a literal "▁" is then an unknown
  character and falls back to the same three bytes, and decodes back to "▁". The price: a
  literal U+FDD0 in text reads as a space, and `tokenize()` shows U+FDD0 where a sentencepiece
  tokenizer shows "▁". (Every space marker has this price for one character; a noncharacter
  is the one text does not contain.)
- Special tokens typed in text. llmctl never makes a special id from text ("<|user|>" typed by a
  user is eight ordinary characters); `tokenizer_config.json` sets `split_special_tokens: true`
  so transformers does the same. Its chat template writes the markers as text, so
  `apply_chat_template` must be called with `tokenizer_kwargs={"split_special_tokens": False}`
  (add `sanitize_control_tokens=True` to keep markers typed in messages as text, as llmctl does);
  `llmctl export --no-split-special-tokens` writes the usual Hugging Face behaviour
  instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmctl.tokenizer.spm import Tokenizer

META = "\u2581"  # sentencepiece's space marker
SPACE = "\ufdd0"  # the marker in tokenizer.json (a noncharacter)


def _pieces(tok: Tokenizer) -> tuple[dict[str, int], list[tuple[str, int]], list[tuple[str, int, str]]]:
    """(vocab string -> id, ordinary pieces with their ids, special pieces as (string, id, kind))."""
    sp = tok._sp
    vocab: dict[str, int] = {}
    normal: list[tuple[str, int]] = []
    special: list[tuple[str, int, str]] = []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            vocab[piece] = i
        elif sp.is_control(i) or sp.is_unknown(i):
            vocab[piece] = i
            special.append((piece, i, "unk" if sp.is_unknown(i) else "control"))
        else:
            if SPACE in piece:
                raise ValueError(f"piece {i} contains U+FDD0, the export's space marker")
            s = piece.replace(META, SPACE)
            vocab[s] = i
            normal.append((s, i))
    return vocab, normal, special


def merges(vocab: dict[str, int], normal: list[tuple[str, int]], scores: list[float]) -> list[list[str]]:
    """BPE merges: (left, right) for every ordinary piece = left + right of two ordinary pieces,
    ranked by the merged piece's score (highest first), then by the ids of left and right."""
    ordinary = {s for s, _ in normal}
    found = []
    for s, i in normal:
        for k in range(1, len(s)):
            a, b = s[:k], s[k:]
            if a in ordinary and b in ordinary:
                found.append((-scores[i], vocab[a], vocab[b], a, b))
    found.sort()
    return [[a, b] for *_, a, b in found]


def tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
    """The `tokenizer.json` document (tokenizers' serialization format) for `tok`."""
    sp = tok._sp
    vocab, normal, special = _pieces(tok)
    scores = [sp.get_score(i) for i in range(sp.get_piece_size())]
    added = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for s, i, _ in special
    ]
    unk = next(s for s, _, kind in special if kind == "unk")
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
            "merges": merges(vocab, normal, scores),
        },
    }
