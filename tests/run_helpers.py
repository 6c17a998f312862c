"""Test helper: start a real llmctl run and freeze it while it holds its output's lock; run a second
one and check that it is refused with one line naming the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from llmctl.store.lock import lock_path


def start_and_freeze(cmd: list[str], output: Path, timeout: float = 120) -> subprocess.Popen:
    """Start a real run and stop it (SIGSTOP) as soon as it holds its output's lock."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock, deadline = lock_path(output), time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(lock.read_text())["pid"] == proc.pid:
                os.kill(proc.pid, signal.SIGSTOP)
                return proc
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"{cmd} never held its lock: {proc.communicate()}")


def refused(cmd: list[str], holder: int) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "another llmctl run is writing this output" in lines[0] and f"pid {holder} " in lines[0]
    return lines[0]


def kill_after_first_task(cmd: list[str], output: Path, timeout: float = 120) -> None:
    """Start a real run and SIGKILL it as soon as its first task record is written; it must not have finished."""
    from llmctl.store.dataset import MANIFEST

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and not list(output.glob("_tasks/*.json")):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (output / MANIFEST).exists(), "the run finished before it could be killed"


def kill_and_resume(cmd: list[str], output: Path) -> tuple[dict, subprocess.CompletedProcess]:
    """SIGKILL a real run after its first task, check the output refuses to open as unfinished,
    re-run the same command; returns (the resumed manifest, the re-run's result). The re-run must
    have resumed at least one finished task."""
    import json

    import pytest

    from llmctl.errors import UsageError
    from llmctl.store.dataset import MANIFEST, Dataset

    kill_after_first_task(cmd, output)
    with pytest.raises(UsageError, match="not finished"):
        Dataset.open(output)
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    resumed = json.loads((output / MANIFEST).read_text())
    assert resumed["timings"]["resumed_tasks"] >= 1
    return resumed, r
