"""Stage outputs on fsspec URIs (s3://, gs://, hdfs:// in production; file:// and memory:// here):
the same contract (task records, manifest last, resume, refuse a different run) and the same bytes
as a local output. file:// goes through fsspec like a remote store (it is not a pathlib.Path)."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmctl.data.filter import FilterConfig, run_filter
from llmctl.data.tokenize import EncodeConfig, run_encode
from llmctl.errors import UsageError
from llmctl.store import fs
from llmctl.store.dataset import MANIFEST, TASKS_DIR, Dataset, StageOutput

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

CRAWL = Path("examples/crawl/crawl-00000.warc.gz")  # a real crawl file (../shared/data/crawl)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    from tokenize_helpers import tinystories_docs, write_documents

    from llmctl.data.tokenize import TokenizerTrainConfig, run_train

    root = tmp_path_factory.mktemp("tok")
    docs = write_documents(root / "docs", [tinystories_docs(300)])
    run_train([str(docs)], root / "tok", TokenizerTrainConfig(vocab_size=600, sample_bytes=150_000))
    return root / "tok"


def files_of(root: Path) -> dict[str, bytes]:
    """Every shard of a dataset directory (not the manifest, whose timings differ), by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


@pytest.fixture
def mem_root():
    root = f"memory://test-{uuid.uuid4().hex[:8]}"
    yield root
    mem = fsspec.filesystem("memory")
    if mem.exists(root.removeprefix("memory://")):
        mem.rm(root.removeprefix("memory://"), recursive=True)


@dataclass
class Cfg:
    a: int = 1


def test_filter_to_file_uri_equals_local_output(tmp_path):
    local = run_filter([str(CRAWL)], tmp_path / "local", FilterConfig(workers=2), progress=False)
    uri = f"file://{tmp_path}/remote"
    remote = run_filter([str(CRAWL)], uri, FilterConfig(workers=2), progress=False)
    assert files_of(tmp_path / "remote") == files_of(tmp_path / "local") and local["num_rows"] > 0
    assert remote["fingerprint"] == local["fingerprint"]
    assert not (tmp_path / "remote" / "_work").exists() and not (tmp_path / "remote" / TASKS_DIR).exists()
    ds = Dataset.open(uri, stage="filter")  # a later stage reads it through the URI
    assert ds.lineage()["path"] == uri and ds.num_rows == local["num_rows"]
    assert ds.read_shard(0, ["id"]).num_rows == local["num_rows"]
    # the same command again: complete, nothing rewritten; a different config refuses
    before = (tmp_path / "remote" / MANIFEST).read_bytes()
    run_filter([str(CRAWL)], uri, FilterConfig(workers=1), progress=False)
    assert (tmp_path / "remote" / MANIFEST).read_bytes() == before
    with pytest.raises(UsageError, match="different run"):
        run_filter([str(CRAWL)], uri, FilterConfig(workers=1, steps=["c4"]), progress=False)


def test_filter_and_encode_on_memory_uris(tmp_path, mem_root, tokenizer):
    cfg = FilterConfig(workers=1)
    run_filter([str(CRAWL)], tmp_path / "docs", cfg, progress=False)
    m = run_filter([str(CRAWL)], f"{mem_root}/docs", cfg, progress=False)
    mem = fsspec.filesystem("memory")
    assert mem.cat(f"{mem_root}/docs/part-00000.parquet") == (tmp_path / "docs" / "part-00000.parquet").read_bytes()
    assert m["inputs"][0]["path"] == str(CRAWL.resolve())

    enc = EncodeConfig(workers=1)
    local = run_encode(str(tmp_path / "docs"), str(tokenizer), tmp_path / "tokens", enc, progress=False)
    remote = run_encode(f"{mem_root}/docs", str(tokenizer), f"{mem_root}/tokens", enc, progress=False)
    assert mem.cat(f"{mem_root}/tokens/part-00000.parquet") == (tmp_path / "tokens" / "part-00000.parquet").read_bytes()
    assert remote["stats"]["tokens"] == local["stats"]["tokens"] > 0
    assert remote["inputs"][0] == {**local["inputs"][0], "path": f"{mem_root}/docs"}


def test_interrupted_uri_output_resumes(mem_root):
    """A run that stopped after one of two tasks: the new run keeps that task's file, removes the
    half-written leftover, and finishes with both."""
    schema = pa.schema([("x", pa.int64())])

    def task(out: StageOutput, i: int) -> None:
        w = out.shard_writer(f"part-{i:05d}.parquet", schema)
        w.write_table(pa.table({"x": [i, i + 1]}))
        out.finish_task(f"part-{i:05d}", {"data": [{"path": f"part-{i:05d}.parquet", **w.close()}]}, {"rows": 2})

    first = StageOutput(f"{mem_root}/ds", "test", Cfg(1), [])
    task(first, 0)
    leftover = fs.to_path(f"{mem_root}/ds/.part-00001.parquet.tmp")
    leftover.write_bytes(b"half a shard")  # what a killed writer leaves
    with pytest.raises(UsageError, match="not an llmctl dataset"):
        Dataset.open(f"{mem_root}/ds")  # no manifest yet: readers refuse it

    again = StageOutput(f"{mem_root}/ds", "test", Cfg(1), [])
    assert again.resumed_tasks == 1 and again.task_done("part-00000") and not again.task_done("part-00001")
    assert not leftover.exists()
    task(again, 1)
    again.finalize(["part-00000", "part-00001"], schema)
    ds = Dataset.open(f"{mem_root}/ds", stage="test")
    assert [ds.read_shard(i).column("x").to_pylist() for i in range(2)] == [[0, 1], [1, 2]]
    assert not fs.to_path(f"{mem_root}/ds/{TASKS_DIR}").exists()
    with pytest.raises(UsageError, match="different run"):
        StageOutput(f"{mem_root}/ds", "test", Cfg(2), [])


def test_missing_uri_dataset_is_a_one_line_error(mem_root):
    with pytest.raises(UsageError, match="no such dataset"):
        Dataset.open(f"{mem_root}/nothing")


def test_cli_encode_between_file_uris(tmp_path, tokenizer):
    from typer.testing import CliRunner

    from llmctl.cli import app

    run_filter([str(CRAWL)], tmp_path / "docs", FilterConfig(workers=1), progress=False)
    shutil.copytree(tokenizer, tmp_path / "tok")
    r = CliRunner().invoke(
        app,
        [
            "tokenize",
            "encode",
            f"file://{tmp_path}/docs",
            "-t",
            f"file://{tmp_path}/tok",
            "-o",
            f"file://{tmp_path}/tokens",
            "--workers",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    t = pq.read_table(tmp_path / "tokens" / "part-00000.parquet")
    assert t.num_rows == Dataset.open(tmp_path / "docs").num_rows
    assert Dataset.open(f"file://{tmp_path}/tokens").manifest["inputs"][1]["path"] == f"file://{tmp_path}/tok"


def test_tokenize_train_to_a_uri(tmp_path, mem_root, tokenizer):
    """The tokenizer is built locally and uploaded file by file, manifest last; encode reads it
    back from the URI."""
    from tokenize_helpers import tinystories_docs, write_documents

    from llmctl.data.tokenize import TokenizerTrainConfig, run_train
    from llmctl.tokenizer.spm import Tokenizer

    docs = write_documents(tmp_path / "docs", [tinystories_docs(300)])
    cfg = TokenizerTrainConfig(vocab_size=600, sample_bytes=150_000)
    m = run_train([str(docs)], f"{mem_root}/tok", cfg)
    assert m["fingerprint"] == Tokenizer.load(tokenizer).fingerprint  # what the same training gives locally
    assert Tokenizer.load(f"{mem_root}/tok").fingerprint == m["fingerprint"]
    assert run_train([str(docs)], f"{mem_root}/tok", cfg) == m  # done: nothing retrained
    mem = fsspec.filesystem("memory")
    assert sorted(p.rsplit("/", 1)[-1] for p in mem.find(f"{mem_root}/tok")) == sorted(
        p.name for p in Path(tokenizer).iterdir()
    )
    with pytest.raises(UsageError, match="pass --overwrite"):
        run_train([str(docs)], f"{mem_root}/tok", TokenizerTrainConfig(vocab_size=700, sample_bytes=150_000))
