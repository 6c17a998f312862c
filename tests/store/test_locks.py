"""One writer per output: real runs started at once into one output, a lock left by a SIGKILL, a
lock of another host, and the lock on fsspec URIs. (Issue 20 found two filter runs into one
directory corrupting _work/docs, and two `pretrain --resume` interleaving metrics.jsonl: that one
is in test_train_reliability.py, with Ctrl-C.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from run_helpers import refused, start_and_freeze

from llmctl.store.dataset import Dataset
from llmctl.store.lock import OutputLock, OutputLocked, lock_path, writer_lock

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

CRAWL = Path("examples/crawl/crawl-00000.warc.gz").resolve()  # a real crawl file (../shared/data/crawl)
LLMCTL = [sys.executable, "-m", "llmctl"]


def crawl_copies(d: Path, n: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copy(CRAWL, d / f"crawl-{i}.warc.gz")
    return d


def test_filter_runs_started_together_one_writes_the_other_stops(tmp_path):
    for copies in (4, 12):  # on a very loaded machine the second may start after the first ended: longer run
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        crawl = crawl_copies(tmp_path / "in", copies)
        cmd = LLMCTL + ["filter", str(crawl), "-o", str(tmp_path / "out"), "--workers", "1"]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
        if not (all(rc == 0 for rc, _ in results) and any("already complete" in err for _, err in results)):
            break
    assert sorted(rc for rc, _ in results) == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    winner = next(p.pid for p, (rc, _) in zip(procs, results) if rc == 0)
    assert f"pid {winner} " in loser and len(loser.strip().splitlines()) == 1
    ds = Dataset.open(tmp_path / "out")  # a manifest whose shards all match their checksums
    for i in range(len(ds.shards)):
        ds.verify(i)
    assert ds.num_rows > 0 and not (tmp_path / "out" / "_work").exists()
    assert not lock_path(tmp_path / "out").exists()  # released


def test_encode_into_an_output_being_written_is_refused_and_touches_nothing(tmp_path):
    from tokenize_helpers import tinystories_docs, write_documents

    from llmctl.data.tokenize import TokenizerTrainConfig, run_train

    docs = write_documents(tmp_path / "docs", [tinystories_docs(300)] * 3)
    run_train([str(docs)], tmp_path / "tok", TokenizerTrainConfig(vocab_size=400, sample_bytes=200_000))
    out = tmp_path / "tokens"
    cmd = LLMCTL + ["tokenize", "encode", str(docs), "-t", str(tmp_path / "tok"), "-o", str(out), "--workers", "1"]
    first = start_and_freeze(cmd, out)
    try:
        before = sorted(p.relative_to(tmp_path) for p in out.rglob("*")) if out.exists() else None
        refused(cmd, first.pid)
        assert (sorted(p.relative_to(tmp_path) for p in out.rglob("*")) if out.exists() else None) == before
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.communicate()[1]
    ds = Dataset.open(out)
    assert all(ds.verify(i) for i in range(len(ds.shards)))


def test_every_writing_command_takes_the_lock(tmp_path):
    """Each stage that writes an output stops at once, naming this process, while it holds the output."""
    from align_helpers import tiny_checkpoint
    from tokenize_helpers import tinystories_docs, write_documents

    docs = write_documents(tmp_path / "docs", [tinystories_docs(50)])
    ck = tiny_checkpoint(tmp_path / "ck")
    jsonl = tmp_path / "sft.jsonl"
    jsonl.write_text(json.dumps({"prompt": "Hi?", "response": "Hello."}) + "\n")
    pipe = tmp_path / "p.yaml"
    pipe.write_text(f"stages:\n  - name: docs\n    run: filter {CRAWL} -o ${{out}} --no-dedup\n")
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    shutil.copytree(docs, root / "docs", dirs_exist_ok=True)
    cases = {
        "import": (["data", "import", str(jsonl), "-o", "{out}", "--format", "sft"], tmp_path / "imported"),
        "tokenize train": (["tokenize", "train", str(docs), "-o", "{out}", "-v", "300"], tmp_path / "tok"),
        "export": (["export", str(ck), "-o", "{out}"], tmp_path / "hf"),
        "eval": (["eval", str(ck), "-o", "{out}", "--task", "perplexity", "--ppl-data", str(docs)], tmp_path / "ev"),
        "report": (["report", str(root)], root / "report"),
        "run": (["run", str(pipe), "-o", "{out}"], root),
    }
    for name, (args, out) in cases.items():
        with writer_lock(out):
            refused(LLMCTL + [a.replace("{out}", str(out)) for a in args], os.getpid())
        assert name == "run" or not out.exists(), name  # nothing touched


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    crawl = crawl_copies(tmp_path / "in", 3)
    out = tmp_path / "out"
    cmd = LLMCTL + ["filter", str(crawl), "-o", str(out), "--workers", "1", "--no-dedup"]
    first = start_and_freeze(cmd, out)
    first.kill()  # SIGKILL: no clean-up runs; the lock file stays, naming a dead pid
    first.wait()
    assert json.loads(lock_path(out).read_text())["pid"] == first.pid
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, (first.pid, again.stderr)
    assert f"taking over the lock of a run that is gone (pid {first.pid} " in again.stderr, (first.pid, again.stderr)
    assert Dataset.open(out).num_rows > 0 and not lock_path(out).exists()


def test_a_lock_of_another_host_is_respected(tmp_path):
    out = tmp_path / "out"
    lock_path(out).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "2026-01-01T00:00:00Z"}))
    with pytest.raises(
        OutputLocked, match=r"locked by a run on another host \(pid 1 on elsewhere.*remove .*\.out\.lock"
    ):
        OutputLock(out).acquire()
    assert not out.exists()


def test_a_dead_pid_is_stale_but_a_live_one_is_not(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    rec = {"host": socket.gethostname(), "pid": dead.pid, "started": "2026-01-01T00:00:00Z"}
    lock_path(out).write_text(json.dumps(rec))
    with writer_lock(out) as lk:  # taken over
        assert json.loads(lk.path.read_text())["pid"] == os.getpid()
        with writer_lock(out):  # re-entrant in the process that holds it
            pass
        assert lk.path.exists()
    assert not lock_path(out).exists()


def test_lock_on_an_fsspec_uri_is_exclusive():
    out = "memory://locks/out"
    first = OutputLock(out).acquire()
    with pytest.raises(OutputLocked, match=f"pid {os.getpid()} "):
        OutputLock(out).acquire()  # a live holder on this host (here: ourselves)
    first.release()
    OutputLock(out).acquire().release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = lock_path(out)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "x"}))
    taken = OutputLock(out).acquire()  # stale: taken over
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    taken.release()
    assert not lock.exists()
