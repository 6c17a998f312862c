"""Stage outputs on S3 itself: s3fs against a local S3 server (moto), so the object-store semantics
are real: no rename (a move is a copy then a delete), no directories, listing by prefix. The filter
(with dedup, 2 worker processes) and tokenize encode write to s3:// and get the local bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmctl.data.filter import FilterConfig, run_filter
from llmctl.data.tokenize import EncodeConfig, TokenizerTrainConfig, run_encode, run_train
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

CRAWL = Path("examples/crawl/crawl-00000.warc.gz")  # a real crawl file (../shared/data/crawl)


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("llmctl-test")
    yield fs
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_filter_and_encode_on_s3(s3, tmp_path):
    from tokenize_helpers import tinystories_docs, write_documents

    cfg = FilterConfig(workers=2)
    local = run_filter([str(CRAWL)], tmp_path / "docs", cfg, progress=False)
    remote = run_filter([str(CRAWL)], "s3://llmctl-test/docs", cfg, progress=False)
    assert remote["shards"] == local["shards"] and remote["files"] == local["files"] and local["num_rows"] > 0
    assert sorted(s3.find("llmctl-test/docs")) == [
        "llmctl-test/docs/_manifest.json",
        "llmctl-test/docs/_stats.json",
        "llmctl-test/docs/part-00000.parquet",
    ]  # the per-step statistics beside the manifest; no _work, _tasks, _run.json or temporary left
    # removed documents are in the dataset beside it
    assert sorted(s3.find("llmctl-test/docs.rejected")) == [
        "llmctl-test/docs.rejected/_manifest.json",
        "llmctl-test/docs.rejected/part-00000.parquet",
    ]
    assert s3.cat("llmctl-test/docs/part-00000.parquet") == (tmp_path / "docs" / "part-00000.parquet").read_bytes()
    with pytest.raises(UsageError, match="different run"):
        run_filter([str(CRAWL)], "s3://llmctl-test/docs", FilterConfig(workers=1, steps=["c4"]), progress=False)

    write_documents(tmp_path / "tokdocs", [tinystories_docs(300)])
    run_train([str(tmp_path / "tokdocs")], tmp_path / "tok", TokenizerTrainConfig(vocab_size=600, sample_bytes=150_000))
    enc = EncodeConfig(workers=1)
    tokens = run_encode("s3://llmctl-test/docs", tmp_path / "tok", "s3://llmctl-test/tokens", enc, progress=False)
    ref = run_encode(tmp_path / "docs", tmp_path / "tok", tmp_path / "tokens", enc, progress=False)
    assert tokens["shards"] == ref["shards"] and tokens["stats"]["tokens"] == ref["stats"]["tokens"] > 0
    ds = Dataset.open("s3://llmctl-test/tokens", stage="tokens")
    assert ds.manifest["inputs"][0]["path"] == "s3://llmctl-test/docs"
    assert ds.read_shard(0, ["input_ids"]).num_rows == local["num_rows"]


def test_writer_lock_on_s3_is_an_exclusive_create(s3, capfd):
    """S3's conditional put (If-None-Match: *, through s3fs "xb") makes the lock atomic on an object store."""
    from llmctl.store.lock import OutputLock, OutputLocked

    first = OutputLock("s3://llmctl-test/locked").acquire()
    assert s3.exists("llmctl-test/.locked.lock")
    with pytest.raises(OutputLocked, match=f"pid {os.getpid()} "):
        OutputLock("s3://llmctl-test/locked").acquire()
    first.release()
    assert not s3.exists("llmctl-test/.locked.lock")
    OutputLock("s3://llmctl-test/locked").acquire().release()
    assert "advisory" not in capfd.readouterr().err  # not the check-then-write fallback
    assert not s3.exists("llmctl-test/.docs.lock")  # the filter run above released its lock
