"""What the local and the Ray executor share: progress reporting and how a failed task is named."""

from __future__ import annotations

import os
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

from llmctl.errors import TaskFailed

EXECUTORS = ("local", "ray")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Reporter:
    """Accumulates progress counts and sends them at most a few times per second."""

    def __init__(self, sink: Callable[[dict[str, int]], None], interval: float = 0.2):
        self._sink = sink
        self._pending: Counter[str] = Counter()
        self._interval = interval
        self._last = time.monotonic()

    def __call__(self, **counts: int) -> None:
        self._pending.update(counts)
        now = time.monotonic()
        if now - self._last >= self._interval:
            self.flush()
            self._last = now

    def flush(self) -> None:
        if self._pending:
            self._sink(dict(self._pending))
            self._pending.clear()


TRACEBACK_ENV = "LLMCTL_TRACEBACK"
RESUME_HINT = "finished shards are kept, re-run the same command to resume"


def task_label(task: Any, index: int) -> str:
    """How failure messages name a task: its `label` (e.g. "part-00002 (crawl-00002.warc.gz)"),
    else its `name`, else its position."""
    return getattr(task, "label", None) or getattr(task, "name", None) or f"task {index}"


def error_line(e: BaseException, tb_text: str | None = None) -> str:
    """One line for an exception: `Type: last line of its message (at file:line)`, where the
    place is the innermost frame of its traceback (`tb_text`: a traceback already formatted, as
    a worker process sends it)."""
    msg = str(e).strip()
    last = msg.splitlines()[-1].strip() if msg else ""
    line = f"{type(e).__name__}: {last}" if last else type(e).__name__
    if tb_text is None and e.__traceback__ is not None:
        tb_text = "".join(traceback.format_tb(e.__traceback__))
    where = re.findall(r'File "([^"]+)", line (\d+)', tb_text or "")
    if where:
        path, lineno = where[-1]
        line += f" (at {short_path(path)}:{lineno})"
    return line[:500]


_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding llmctl/


def short_path(path: str) -> str:
    """A source file as an error names it: `llmctl/data/filter.py` for llmctl's own modules
    (wherever the checkout or the install lives, whatever its folder is called), relative to the
    working directory for other files under it, else its last two components."""
    full = os.path.abspath(path)
    for base, first in ((_PACKAGE_ROOT, "llmctl"), (os.getcwd(), None)):
        rel = os.path.relpath(full, base) if os.path.splitdrive(full)[0] == os.path.splitdrive(base)[0] else os.pardir
        parts = rel.split(os.sep)
        if parts[0] != os.pardir and (first is None or parts[0] == first):
            return "/".join(parts)
    return "/".join(full.replace(os.sep, "/").split("/")[-2:])


def traceback_hint() -> str:
    return "" if os.environ.get(TRACEBACK_ENV) else f"; {TRACEBACK_ENV}=1 prints the traceback"


def task_failed(label: str, e: BaseException, tb_text: str | None = None) -> TaskFailed:
    if os.environ.get(TRACEBACK_ENV):
        print(tb_text if tb_text else "".join(traceback.format_exception(e)), file=sys.stderr, end="")
    return TaskFailed(f"shard {label} failed: {error_line(e, tb_text)}; {RESUME_HINT}{traceback_hint()}")
