"""Run independent tasks (one per shard) in worker processes, in a fixed order.

Each task is a plain function call `fn(task, report)`; `report(docs=..., bytes=...)` sends
progress counts to the parent. Results come back in task order, whatever the worker count,
so a stage's output never depends on how many workers ran it. A task that raises, or whose
worker process dies, stops the run with a one-line `TaskFailed` naming the shard (its `label`, else
its `name`) and the error (the original exception chained as its `__cause__`;
`LLMCTL_TRACEBACK=1` also prints the traceback); tasks already finished keep their output for a
resume. A `UsageError` raised in a task stays a `UsageError`.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as _queue
import re
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from llmctl.errors import TaskFailed, UsageError
from llmctl.utils.progress import StageProgress

T = TypeVar("T")
R = TypeVar("R")

_QUEUE: Any = None
_STARTS: Any = None  # shared array: the pid of the worker that started each task (0: not started)


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


def _init_worker(q: Any, starts: Any = None) -> None:
    global _QUEUE, _STARTS
    _QUEUE, _STARTS = q, starts


def _call(fn: Callable[[T, Reporter], R], task: T, index: int = -1) -> R:
    if _STARTS is not None and index >= 0:
        _STARTS[index] = os.getpid()  # shared memory, no flush: which task a worker that dies was running
    rep = Reporter(_QUEUE.put if _QUEUE is not None else (lambda c: None))
    try:
        return fn(task, rep)
    finally:
        rep.flush()


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


def _traceback_hint() -> str:
    return "" if os.environ.get(TRACEBACK_ENV) else f"; {TRACEBACK_ENV}=1 prints the traceback"


def _task_failed(label: str, e: BaseException, tb_text: str | None = None) -> TaskFailed:
    if os.environ.get(TRACEBACK_ENV):
        print(tb_text if tb_text else "".join(traceback.format_exception(e)), file=sys.stderr, end="")
    return TaskFailed(f"shard {label} failed: {error_line(e, tb_text)}; {RESUME_HINT}{_traceback_hint()}")


EXECUTORS = ("local", "ray")
_DEFAULT = {"executor": "local", "ray_address": "auto"}


@contextlib.contextmanager
def using(executor: str = "local", ray_address: str | None = "auto", workers: int | None = None) -> Iterator[None]:
    """Make `executor` the default of every `run_tasks` call inside the block.

    A stage wraps its whole run in it, so each of its phases (filter, the dedup shuffle's steps,
    final write; tokenize encode) runs on the executor the user chose, with no other change.
    With `executor="ray"` it connects to Ray on entry (llmctl.executor.ray.connect), so an
    unreachable cluster is a one-line UsageError before the stage writes anything; `workers`
    sizes the local Ray instance started when there is no cluster (default: all cores).
    """
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        from llmctl.executor.ray import connect

        connect(ray_address, workers or default_workers())
    saved = dict(_DEFAULT)
    _DEFAULT.update(executor=executor, ray_address=ray_address)
    try:
        yield
    finally:
        _DEFAULT.update(saved)


def run_tasks(
    fn: Callable[[T, Reporter], R],
    tasks: Sequence[T],
    workers: int = 1,
    progress: StageProgress | None = None,
    executor: str | None = None,
    ray_address: str | None = None,
    names: Sequence[str] | None = None,
) -> list[R]:
    """Call `fn` on every task with up to `workers` processes; results in task order.

    `executor="ray"` runs the same calls as Ray tasks (llmctl.executor.ray): retried when a
    worker dies or the task raises, failures reported by name (`names`, default: each task's
    `label` or `name`).
    """
    executor = executor or _DEFAULT["executor"]
    if executor == "ray":
        from llmctl.executor.ray import run_tasks_ray

        address = ray_address if ray_address is not None else _DEFAULT["ray_address"]
        if names is None:
            names = [task_label(t, i) for i, t in enumerate(tasks)]
        return run_tasks_ray(fn, tasks, workers, progress, address=address, names=names)
    if executor != "local":
        raise UsageError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    sink = progress.update if progress is not None else (lambda c: None)
    if workers <= 1 or len(tasks) <= 1:
        results = []
        for i, t in enumerate(tasks):
            rep = Reporter(sink)
            try:
                results.append(fn(t, rep))
            except UsageError:
                raise
            except Exception as e:  # noqa: BLE001 - one line naming the shard; the cause is chained
                raise _task_failed(task_label(t, i), e) from e
            finally:
                rep.flush()
        return results

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    q = ctx.Queue()
    stop = threading.Event()
    starts = ctx.Array("q", len(tasks), lock=False)  # each slot written by one worker

    def drain() -> None:
        while not stop.is_set() or not q.empty():
            try:
                msg = q.get(timeout=0.1)
            except _queue.Empty:
                continue
            except (EOFError, OSError):
                return
            sink(msg)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    failure: BaseException | None = None
    procs: dict[int, Any] = {}
    try:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)), mp_context=ctx, initializer=_init_worker, initargs=(q, starts)
        ) as pool:
            futures = [pool.submit(_call, fn, task, i) for i, task in enumerate(tasks)]
            procs = dict(getattr(pool, "_processes", None) or {})  # to tell which worker died
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for p in pending:
                p.cancel()
            failed = [i for i, f in enumerate(futures) if f in done and f.exception() is not None]
            if not failed:
                return [f.result() for f in futures]
            first = futures[failed[0]].exception()
            assert first is not None
            if not isinstance(first, BrokenProcessPool):
                failed = [i for i in failed if not isinstance(futures[i].exception(), BrokenProcessPool)]
                first = futures[failed[0]].exception()
                assert first is not None
                failure = first
    finally:
        stop.set()
        t.join(timeout=2)
    if failure is None:  # a worker process died: name the task it was running
        err = futures[failed[0]].exception()
        assert err is not None
        raise TaskFailed(_died_message(tasks, futures, list(starts), procs)) from err
    if isinstance(failure, UsageError):
        raise failure
    cause = failure.__cause__
    tb_text = getattr(cause, "tb", None) if cause is not None else None  # the worker's traceback
    raise _task_failed(task_label(tasks[failed[0]], failed[0]), failure, tb_text) from failure


def _died_message(tasks: Sequence[Any], futures: list, starts: list[int], procs: dict[int, Any]) -> str:
    """A worker process died (killed, out of memory, a crash in native code): the task it ran,
    i.e. the one it started that did not finish (a worker runs one task at a time)."""
    unfinished = [
        i for i, pid in enumerate(starts) if pid and not (futures[i].done() and futures[i].exception() is None)
    ]
    dead = {
        pid: p.exitcode for pid, p in procs.items() if p.exitcode is not None and p.exitcode not in (0, -signal.SIGTERM)
    }
    culprits = [(i, dead[starts[i]]) for i in unfinished if starts[i] in dead]
    if not culprits:  # the pool's bookkeeping changed: every task that was running
        culprits = [(i, None) for i in unfinished]
    how = ""
    codes = [c for _, c in culprits if c is not None]
    if codes:
        code = codes[0]
        how = (
            f" (killed by {signal.Signals(-code).name}{', out of memory?' if code == -signal.SIGKILL else ''})"
            if code < 0 and -code in signal.valid_signals()
            else f" (exit code {code})"
        )
    if culprits:
        names = ", ".join(task_label(tasks[i], i) for i, _ in culprits)
        what = f"the worker process running shard {names} died{how}"
    else:
        what = f"a worker process died{how}"
    return f"{what}; {RESUME_HINT}"
