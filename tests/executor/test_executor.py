"""The local executor's failures: a task that raises, or whose worker process dies, is one
`TaskFailed` line naming the shard (its label) and the error, with the original exception chained;
a UsageError stays a UsageError; finished tasks keep their results for a resume."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmctl.errors import TaskFailed, UsageError
from llmctl.executor import run_tasks


@dataclass
class Shard:
    index: int
    marker: str = ""

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    @property
    def label(self) -> str:
        return f"{self.name} (crawl-{self.index:05d}.warc.gz)"


def raise_on_2(t: Shard, report) -> int:
    if t.index == 2:
        raise ValueError("bad record at offset 1234\nsecond line: the cause")
    if t.marker:
        Path(t.marker, t.name).touch()
    return t.index


def usage_on_1(t: Shard, report) -> int:
    if t.index == 1:
        raise UsageError("input crawl-00001.warc.gz: not a WARC file")
    return t.index


def die_on_3(t: Shard, report) -> int:
    if t.index == 3:
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.5)
    return t.index


def test_task_label_prefers_label_then_name():
    from llmctl.executor.base import task_label

    assert task_label(Shard(2), 2) == "part-00002 (crawl-00002.warc.gz)"

    @dataclass
    class Named:
        name: str

    assert task_label(Named("pairs-00004"), 4) == "pairs-00004"
    assert task_label((1, "x"), 7) == "task 7"


@pytest.mark.parametrize("workers", [1, 2])
def test_raising_task_is_one_line_naming_the_shard(workers, tmp_path):
    tasks = [Shard(i, str(tmp_path)) for i in range(4)]
    with pytest.raises(TaskFailed) as ei:
        run_tasks(raise_on_2, tasks, workers=workers)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith("shard part-00002 (crawl-00002.warc.gz) failed: ValueError: second line: the cause")
    assert "(at tests/executor/test_executor.py:" in msg  # where it was raised
    assert "re-run the same command to resume" in msg and "LLMCTL_TRACEBACK=1" in msg
    assert isinstance(ei.value.__cause__, ValueError)  # library users keep the original exception
    assert "bad record at offset 1234" in str(ei.value.__cause__)
    assert isinstance(ei.value, RuntimeError)  # callers that caught the task's RuntimeError still do
    done = sorted(p.name for p in tmp_path.iterdir())
    assert "part-00000" in done and "part-00002" not in done  # earlier shards finished


@pytest.mark.parametrize("workers", [1, 2])
def test_traceback_on_request(workers, monkeypatch, capfd):
    monkeypatch.setenv("LLMCTL_TRACEBACK", "1")
    with pytest.raises(TaskFailed) as ei:
        run_tasks(raise_on_2, [Shard(i) for i in range(3)], workers=workers)
    assert "LLMCTL_TRACEBACK" not in str(ei.value)
    err = capfd.readouterr().err
    assert "Traceback" in err and "raise_on_2" in err and "bad record at offset 1234" in err


@pytest.mark.parametrize("workers", [1, 2])
def test_usage_error_in_a_task_stays_a_usage_error(workers):
    with pytest.raises(UsageError, match="not a WARC file"):
        run_tasks(usage_on_1, [Shard(i) for i in range(3)], workers=workers)


def test_killed_worker_names_its_shard():
    with pytest.raises(TaskFailed) as ei:
        run_tasks(die_on_3, [Shard(i) for i in range(5)], workers=2)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(
        "the worker process running shard part-00003 (crawl-00003.warc.gz) died (killed by SIGKILL, out of memory?)"
    )
    assert "re-run the same command to resume" in msg
    assert isinstance(ei.value.__cause__, BrokenProcessPool)


def test_error_line():
    from llmctl.executor.base import error_line

    try:
        raise KeyError("col")
    except KeyError as e:
        line = error_line(e)
    assert line.startswith("KeyError: 'col' (at tests/executor/test_executor.py:")
    assert error_line(RuntimeError()) == "RuntimeError"


def test_error_line_names_llmctl_files_whatever_the_checkout_folder_is_called(tmp_path, monkeypatch):
    # a clone in a folder named llmctl (what `git clone .../llmctl` makes): /x/llmctl/llmctl/...
    from llmctl.executor import base as executor

    clone = tmp_path / "llmctl"
    (clone / "tests").mkdir(parents=True)
    monkeypatch.setattr(executor, "_PACKAGE_ROOT", str(clone))
    monkeypatch.chdir(clone)

    def at(path: str) -> str:
        return executor.error_line(ValueError("bad"), f'  File "{path}", line 7, in f\n')

    assert at(str(clone / "llmctl" / "data" / "filter.py")) == "ValueError: bad (at llmctl/data/filter.py:7)"
    assert at(str(clone / "tests" / "test_x.py")) == "ValueError: bad (at tests/test_x.py:7)"
    assert at("/usr/lib/python3/json/decoder.py") == "ValueError: bad (at json/decoder.py:7)"
    monkeypatch.chdir(tmp_path)  # run from elsewhere: llmctl's own files keep their package path
    assert at(str(clone / "llmctl" / "cli" / "app.py")) == "ValueError: bad (at llmctl/cli/app.py:7)"
