"""Run independent tasks (one per shard) in worker processes on this machine, in a fixed order.

Each task is a plain function call `fn(task, report)`; `report(docs=..., bytes=...)` sends
progress counts to the parent. Results come back in task order, whatever the worker count,
so a stage's output never depends on how many workers ran it. A task that raises, or whose
worker process dies, stops the run with a one-line `TaskFailed` naming the shard (its `label`, else
its `name`) and the error (the original exception chained as its `__cause__`;
`LLMCTL_TRACEBACK=1` also prints the traceback); tasks already finished keep their output for a
resume. A `UsageError` raised in a task stays a `UsageError`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as _queue
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from llmctl.errors import TaskFailed, UsageError
from llmctl.executor.base import RESUME_HINT, Reporter, task_failed, task_label
from llmctl.utils.progress import StageProgress

T = TypeVar("T")
R = TypeVar("R")

_QUEUE: Any = None
_STARTS: Any = None  # shared array: the pid of the worker that started each task (0: not started)


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


def run_local(
    fn: Callable[[T, Reporter], R],
    tasks: Sequence[T],
    workers: int = 1,
    progress: StageProgress | None = None,
) -> list[R]:
    """Call `fn` on every task with up to `workers` processes (in this process for one); results in task order."""
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
                raise task_failed(task_label(t, i), e) from e
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
    raise task_failed(task_label(tasks[failed[0]], failed[0]), failure, tb_text) from failure


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
