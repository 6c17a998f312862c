"""The steps of `llmctl filter`, one at a time, from Python (a notebook, another tool's tests).

Each function is a thin face over the code the stage runs (the same classes and configs, never a
second implementation), so what it says about a text is what `llmctl filter` does with it:

    from llmctl import api

    text = api.extract_text(html_bytes, url="https://example.org/")   # charset, main content
    text, counts = api.scrub_pii(text)                                  # {"email": 1, "ip": 0, "phone": 2}
    kept, reason = api.c4_filter(text)                                  # (cleaned text, None) or (None, "c4.bad_words")
    api.gopher_reasons(text)                                            # [] or ["gopher.stop_words", ...]
    api.language(text)                                                  # ("en", 0.93)
    api.toxicity_score([text])                                          # array([0.04], dtype=float32)
    api.quality_score([text], "models/quality")                         # array([0.87], dtype=float32)
    api.dedup(texts, exact=True, minhash=True, threshold=0.8)           # [0, 2, 3]: indices kept

Options are the fields of the step's config (`llmctl filter --print-config` lists them), given as
keyword arguments: `api.c4_filter(text, min_num_sentences=5)`, `api.scrub_pii(text,
bare_phones=True)`. `dedup` runs the stage's own dedup shuffle on the texts (in a temporary
directory, one worker), so its answer is the stage's answer.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from llmctl.data.dedup.base import DedupConfig
from llmctl.data.document import Document
from llmctl.data.extract import ExtractConfig, Unreadable, html_to_text
from llmctl.data.filter import FilterConfig, run_filter
from llmctl.data.quality import load_model as load_quality_model
from llmctl.data.quality import score_texts
from llmctl.data.steps.c4 import C4Config, C4Filter
from llmctl.data.steps.gopher import (
    GopherQualityConfig,
    GopherQualityFilter,
    GopherRepetitionConfig,
    GopherRepetitionFilter,
)
from llmctl.data.steps.langid import LangIdConfig, predict
from llmctl.data.steps.langid import load_model as load_langid_model
from llmctl.data.steps.pii import PIIConfig, PIIScrubber
from llmctl.data.steps.toxicity import toxicity_scores
from llmctl.errors import UsageError

__all__ = [
    "extract_text",
    "scrub_pii",
    "c4_filter",
    "gopher_reasons",
    "language",
    "toxicity_score",
    "quality_score",
    "dedup",
]


def _config(cls, options: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r} of {cls.__name__}; options: {', '.join(sorted(names))}")
    return cls(**options)


def _doc(text: str) -> Document:
    return Document(id="api", text=text)


def extract_text(html: bytes, url: str | None = None, charset: str | None = None, **options: Any) -> str:
    """The main text of an HTML page, decoded as the filter decodes it (`charset`: the HTTP header's,
    if known; else the page's BOM, its <meta>, then detection). `url` is accepted for the record and
    does not change the result. Raises ValueError when the stage would count the page unreadable
    (binary_payload, invalid_encoding). Options: ExtractConfig's (main_content, list_bullets)."""
    if isinstance(html, str):
        html = html.encode("utf-8")
    out = html_to_text(html, charset, _config(ExtractConfig, options))
    if isinstance(out, Unreadable):
        raise ValueError(f"unreadable page ({out.reason})" + (f": {url}" if url else ""))
    return out[0]


def scrub_pii(text: str, **options: Any) -> tuple[str, dict[str, int]]:
    """(text with e-mails, phones and IPs replaced by placeholders, replacements per kind).
    Options: PIIConfig's (bare_phones=True also replaces bare 10-digit numbers; emails, phones, ips)."""
    return PIIScrubber(_config(PIIConfig, options)).scrub(text)


def c4_filter(text: str, **options: Any) -> tuple[str | None, str | None]:
    """(the text with C4's line rules applied, None) when C4 keeps it, else (None, the reason)."""
    doc = _doc(text)
    reason = C4Filter(_config(C4Config, options))(doc, Counter())
    return (None, reason) if reason else (doc.text, None)


def gopher_reasons(
    text: str, quality: dict[str, Any] | None = None, repetition: dict[str, Any] | None = None
) -> list[str]:
    """Why Gopher's rules would drop `text`: the first failing repetition rule and the first failing
    quality rule (the stage stops at the first of all), [] when both keep it. `quality` and
    `repetition`: options of GopherQualityConfig / GopherRepetitionConfig."""
    steps = [
        GopherRepetitionFilter(_config(GopherRepetitionConfig, repetition or {})),
        GopherQualityFilter(_config(GopherQualityConfig, quality or {})),
    ]
    return [r for r in (step(_doc(text), Counter()) for step in steps) if r]


def language(text: str, model: str | None = None) -> tuple[str, float]:
    """(language code, probability) from fastText lid.176, as the langid step computes them."""
    return predict(load_langid_model(model), text, LangIdConfig().max_chars)


def toxicity_score(texts: list[str]) -> np.ndarray:
    """Probability of offensive language of each text (the toxicity step's model, alt-profanity-check)."""
    return toxicity_scores(list(texts))


def quality_score(texts: list[str], model: str | Path) -> np.ndarray:
    """Probability of the positive label (`hq` for a quality model) of each text under a
    `llmctl quality train` model, as the quality step scores documents."""
    m = load_quality_model(model)
    return score_texts(m, list(texts), label=getattr(m, "llmctl_label", None))


def dedup(
    texts: list[str],
    exact: bool = True,
    minhash: bool = True,
    line: bool = False,
    c4_span: bool = False,
    return_texts: bool = False,
    **options: Any,
) -> list[int] | list[tuple[int, str]]:
    """Indices of the texts the filter's dedup keeps (in order), or (index, text) pairs with
    `return_texts` (line and span dedup edit texts). Options: DedupConfig's (num_perm, bands, rows,
    ngram, threshold, line_max_docs, span_sentences, verify, seed). The first of a group is kept."""
    dc = replace(_config(DedupConfig, options), exact=exact, minhash=minhash, line=line, c4_span=c4_span)
    if not texts:
        return []
    if not dc.enabled:
        return [(i, t) for i, t in enumerate(texts)] if return_texts else list(range(len(texts)))
    cfg = FilterConfig(steps=[], dedup=dc, workers=1, write_rejected=False)
    with tempfile.TemporaryDirectory(prefix="llmctl-dedup-") as tmp:
        src = Path(tmp) / "texts.jsonl"
        with open(src, "w", encoding="utf-8") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": str(i), "text": t}) + "\n")
        run_filter([str(src)], Path(tmp) / "out", cfg, progress=False)
        rows = [
            r
            for p in sorted((Path(tmp) / "out").glob("part-*.parquet"))
            for r in pq.read_table(p, columns=["id", "text"]).to_pylist()
        ]
    kept = sorted((int(r["id"]), r["text"]) for r in rows)
    return kept if return_texts else [i for i, _ in kept]
