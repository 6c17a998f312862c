"""`llmctl filter` reads inputs through fsspec URIs (s3://, gs://, ... in production; file:// and
memory:// here): the same documents as from local paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from llmctl.data.filter import FilterConfig, run_filter
from llmctl.errors import UsageError

CRAWL = Path("examples/crawl/crawl-00000.warc.gz")  # a real crawl file (../shared/data/crawl)


def kept(out: Path) -> list[tuple[str, str]]:
    t = pq.read_table(out / "part-00000.parquet", columns=["id", "text"])
    return list(zip(t.column("id").to_pylist(), t.column("text").to_pylist()))


@pytest.mark.slow
def test_file_uri_directory_gives_the_local_result(tmp_path):
    d = tmp_path / "crawl"
    d.mkdir()
    shutil.copy(CRAWL, d / CRAWL.name)
    (d / "manifest.jsonl").write_text("{}\n")  # a crawl folder's metadata is not read as documents
    local = run_filter([str(d)], tmp_path / "local", FilterConfig(workers=1), progress=False)
    remote = run_filter([f"file://{d}"], tmp_path / "uri", FilterConfig(workers=1), progress=False)
    assert kept(tmp_path / "uri") == kept(tmp_path / "local") and remote["num_rows"] == local["num_rows"] > 0
    assert remote["inputs"][0]["path"] == f"file://{d}/{CRAWL.name}"
    assert remote["inputs"][0]["fingerprint"] == local["inputs"][0]["fingerprint"]  # content, not location


def test_memory_uri_jsonl_and_glob(tmp_path):
    mem = fsspec.filesystem("memory")
    docs = [
        {"id": f"d{i}", "text": "The little girl walked to the park with her dog and her mother. " * 12}
        for i in range(3)
    ]
    with mem.open("/bucket/part-1.jsonl", "w") as f:
        f.write("".join(json.dumps(d) + "\n" for d in docs))
    m = run_filter(["memory://bucket/*.jsonl"], tmp_path / "out", FilterConfig(workers=1, steps=["c4"]), progress=False)
    assert m["stats"]["documents_read"] == 3
    with pytest.raises(UsageError, match="no input matches"):
        run_filter(["memory://bucket/*.warc.gz"], tmp_path / "none", FilterConfig(workers=1), progress=False)
    assert not (tmp_path / "none").exists()


def test_unknown_protocol_is_a_one_line_error(tmp_path):
    with pytest.raises(UsageError, match="cannot open this filesystem"):
        run_filter(["nosuchproto://bucket/x.warc.gz"], tmp_path / "out", FilterConfig(workers=1), progress=False)
