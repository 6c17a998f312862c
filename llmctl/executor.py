"""Run independent tasks (one per shard) in worker processes, in a fixed order.

Each task is a plain function call `fn(task, report)`; `report(docs=..., bytes=...)` sends
progress counts to the parent. Results come back in task order, whatever the worker count,
so a stage's output never depends on how many workers ran it. A task that raises stops the
run; tasks already finished keep their output for a resume.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as _queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from llmctl.errors import UsageError
from llmctl.progress import StageProgress

T = TypeVar("T")
R = TypeVar("R")

_QUEUE: Any = None


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


def _init_worker(q: Any) -> None:
    global _QUEUE
    _QUEUE = q


def _call(fn: Callable[[T, Reporter], R], task: T) -> R:
    rep = Reporter(_QUEUE.put if _QUEUE is not None else (lambda c: None))
    try:
        return fn(task, rep)
    finally:
        rep.flush()


EXECUTORS = ("local", "ray")
_DEFAULT = {"executor": "local", "ray_address": "auto"}


@contextlib.contextmanager
def using(executor: str = "local", ray_address: str | None = "auto") -> Iterator[None]:
    """Make `executor` the default of every `run_tasks` call inside the block.

    A stage wraps its whole run in it, so each of its phases (filter, dedup signatures, bands,
    final write; tokenize encode) runs on the executor the user chose, with no other change.
    """
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
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

    `executor="ray"` runs the same calls as Ray tasks (llmctl.ray_executor): retried when a
    worker dies, failures reported by task name (`names`).
    """
    executor = executor or _DEFAULT["executor"]
    if executor == "ray":
        from llmctl.ray_executor import run_tasks_ray

        address = ray_address if ray_address is not None else _DEFAULT["ray_address"]
        if names is None:
            names = [getattr(t, "name", f"task {i}") for i, t in enumerate(tasks)]
        return run_tasks_ray(fn, tasks, workers, progress, address=address, names=names)
    if executor != "local":
        raise UsageError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    sink = progress.update if progress is not None else (lambda c: None)
    if workers <= 1 or len(tasks) <= 1:
        results = []
        for t in tasks:
            rep = Reporter(sink)
            results.append(fn(t, rep))
            rep.flush()
        return results

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    q = ctx.Queue()
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set() or not q.empty():
            try:
                sink(q.get(timeout=0.1))
            except _queue.Empty:
                continue
            except (EOFError, OSError):
                return

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx,
                                 initializer=_init_worker, initargs=(q,)) as pool:
            futures = [pool.submit(_call, fn, task) for task in tasks]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    for p in pending:
                        p.cancel()
                    raise f.exception()  # type: ignore[misc]
            return [f.result() for f in futures]
    finally:
        stop.set()
        t.join(timeout=2)
