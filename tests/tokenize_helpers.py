"""Test helper for the tokenize tests: write a small documents dataset through the real contract.

The tokenize stage reads any finished dataset with a `text` column; building one here with
`StageOutput` keeps these tests independent of `llmctl filter`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from llmctl.data.document import DOCUMENT_SCHEMA
from llmctl.store.dataset import StageOutput

TINYSTORIES = Path(__file__).parent / "fixtures" / "tinystories_valid_head_300k.txt"  # see tests/fixtures/README.md


def tinystories_docs(limit: int | None = None) -> list[str]:
    """Stories from the TinyStories validation head (blank-line separated)."""
    docs = [d.strip() for d in TINYSTORIES.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    return docs[:limit] if limit else docs


def write_documents(
    out: Path, texts_per_shard: list[list[str]], stage: str = "filter", schema: pa.Schema = DOCUMENT_SCHEMA
) -> Path:
    """A finished documents dataset with one shard per inner list; ids are 'doc-<shard>-<row>'."""
    so = StageOutput(out, stage, _Cfg(), inputs=[])
    names = []
    for k, texts in enumerate(texts_per_shard):
        name = f"part-{k:05d}"
        w = so.shard_writer(f"{name}.parquet", schema)
        for j, t in enumerate(texts):
            row: dict[str, Any] = {f.name: None for f in schema}
            row.update({"id": f"doc-{k}-{j}", "text": t, "source": "test"})
            w.write({c: row[c] for c in schema.names})
        so.finish_task(name, {"data": [{"path": f"{name}.parquet", **w.close()}]})
        names.append(name)
    so.finalize(names, schema)
    return out


class _Cfg:
    """A config with no fields (dataclass-like for `output_fields`)."""

    __dataclass_fields__: dict = {}
