"""What a user meets outside the happy path: relative paths when tasks run in another directory
(Ray workers on a cluster do), Ctrl-C, and one-process filesystems."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llmctl.data.document import DOCUMENT_SCHEMA
from llmctl.data.filter import FilterConfig, FilterTask, filter_task, resolve_inputs, run_filter
from llmctl.errors import UsageError
from llmctl.executor import run_tasks
from llmctl.store.dataset import Dataset, StageOutput

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

CRAWL = Path("examples/crawl/crawl-00000.warc.gz").resolve()  # a real crawl file (../shared/data/crawl)


def no_dedup(workers: int = 1) -> FilterConfig:
    cfg = FilterConfig(workers=workers)
    cfg.dedup.exact = cfg.dedup.minhash = cfg.dedup.c4_span = False
    return cfg


def in_root_directory(task: FilterTask, report) -> dict:
    """The real filter task, run from / (as a Ray worker on a cluster runs from its own directory)."""
    os.chdir("/")
    return filter_task(task, report)


def test_tasks_run_from_another_directory_with_relative_paths(tmp_path, monkeypatch):
    for i in range(2):
        shutil.copy(CRAWL, tmp_path / f"crawl-{i}.warc.gz")
    monkeypatch.chdir(tmp_path)
    cfg = no_dedup(workers=2)
    ref = run_filter(["crawl-0.warc.gz", "crawl-1.warc.gz"], "ref", cfg, progress=False)

    files = resolve_inputs(["crawl-0.warc.gz", "crawl-1.warc.gz"], cfg.extract)
    out = StageOutput("moved", "filter", cfg, [f.lineage for f in files])
    assert out.path.is_absolute() and all(Path(f.path).is_absolute() for f in files)
    tasks = [FilterTask(i, f, out, cfg) for i, f in enumerate(files)]
    run_tasks(in_root_directory, tasks, workers=2)
    moved = out.finalize([t.name for t in tasks], DOCUMENT_SCHEMA)
    assert moved["shards"] == ref["shards"] and moved["files"] == ref["files"]
    assert not Path("/moved").exists()
    # the source column keeps the path as the user gave it
    assert set(pq.read_table(tmp_path / "ref" / "part-00000.parquet").column("source").to_pylist()) == {
        "crawl-0.warc.gz"
    }
    assert Dataset.open("ref").path == tmp_path / "ref" and Dataset.open("ref").shards[0].is_absolute()


def test_memory_uri_needs_one_process(tmp_path):
    with pytest.raises(UsageError, match="memory:// filesystem lives in one process"):
        run_filter([str(CRAWL)], "memory://one-process/out", no_dedup(workers=2), progress=False)


def test_ctrl_c_exits_130_and_the_rerun_resumes(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):  # interrupted in the second of three shards (each takes seconds): two are left to resume
        shutil.copy(CRAWL, d / f"crawl-{i}.warc.gz")
    cmd = [
        sys.executable,
        "-m",
        "llmctl",
        "filter",
        str(d),
        "-o",
        str(tmp_path / "out"),
        "--workers",
        "1",
        "--no-dedup",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tasks = tmp_path / "out" / "_tasks"
    deadline = time.time() + 60
    while time.time() < deadline and not (tasks.is_dir() and any(tasks.glob("*.json"))):
        time.sleep(0.05)  # interrupt once the first shard is finished
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "re-run the same command to resume" in err
    assert not (tmp_path / "out" / "_manifest.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming:" in again.stderr
    ref = run_filter([str(d)], tmp_path / "ref", no_dedup(), progress=False)
    assert Dataset.open(tmp_path / "out").manifest["shards"] == ref["shards"]
