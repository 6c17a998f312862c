"""The document record that flows through `llmctl filter`, and the interface of a filter step.

A step looks at one document and either keeps it (returns None; it may edit `doc.text`, e.g.
drop lines, or set metadata columns) or drops it (returns a reason such as "c4.bad_words").
Steps count what they do in `stats` ("c4.line_removed.javascript"), which ends up in the
manifest, so the funnel can be explained line by line, as in datatrove.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa


@dataclass
class Document:
    id: str
    text: str
    source: str = ""
    url: str | None = None
    date: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _words: tuple[str, list[str]] | None = field(default=None, init=False, repr=False, compare=False)

    def words(self) -> list[str]:
        """`text.split()`, computed once for the current text (a step that changes `text` gets new
        words). Callers must not modify the list."""
        cached = self._words
        if cached is None or cached[0] is not self.text:
            cached = self._words = (self.text, self.text.split())
        return cached[1]


class Step(Protocol):
    """A filter step: `None` keeps the document, a string is the reason it is dropped."""

    name: str

    def __call__(self, doc: Document, stats: Counter[str]) -> str | None: ...


# The documents schema. Metadata columns are always present (null/0 when the step
# that fills them is switched off) so every shard of every run has the same schema.
DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("source", pa.string()),
        pa.field("date", pa.string()),
        pa.field("pii_email", pa.int32()),
        pa.field("pii_phone", pa.int32()),
        pa.field("pii_ip", pa.int32()),
        pa.field("quality_score", pa.float32()),
        pa.field("language", pa.string()),
        pa.field("language_score", pa.float32()),
        pa.field("toxicity_score", pa.float32()),
    ]
)
DETAIL_KEY = "_detail"  # Document.meta key a step may set with the detail of its drop ("de 0.97")
META_COLUMNS = [f.name for f in DOCUMENT_SCHEMA if f.name not in ("id", "text", "url", "source", "date")]

# The metadata columns are the ones the registered steps fill (llmctl.data.steps.STEPS `columns`;
# tests/data/steps/test_registry.py checks that they match).
# Removed documents: the same columns plus the rule that removed them and a detail
# (the measured value, or the id of the document a duplicate duplicates).
REJECTED_SCHEMA = DOCUMENT_SCHEMA.append(pa.field("reason", pa.string(), nullable=False)).append(
    pa.field("detail", pa.string())
)


def to_row(doc: Document) -> dict[str, Any]:
    row = {"id": doc.id, "text": doc.text, "url": doc.url, "source": doc.source, "date": doc.date}
    for c in META_COLUMNS:
        row[c] = doc.meta.get(c)
    return row
