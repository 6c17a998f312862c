"""Run a stage's per-shard tasks on this machine (`local`) or on a Ray cluster (`ray`).

`run_tasks(fn, tasks)` calls `fn(task, report)` for every task and returns the results in task
order on either executor; `using(executor)` picks the executor for every `run_tasks` call in a block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from llmctl.errors import UsageError
from llmctl.executor.base import EXECUTORS, Reporter, default_workers, task_label
from llmctl.executor.local import run_local
from llmctl.executor.ray import connect, run_tasks_ray
from llmctl.utils.progress import StageProgress

__all__ = ["EXECUTORS", "Reporter", "current_executor", "default_workers", "run_tasks", "using"]

T = TypeVar("T")
R = TypeVar("R")

_DEFAULT = {"executor": "local", "ray_address": "auto"}


def _check(executor: str) -> None:
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")


def current_executor() -> str:
    """The executor a `run_tasks` call without `executor=` runs on here (`using` sets it)."""
    return _DEFAULT["executor"]


@contextlib.contextmanager
def using(executor: str = "local", ray_address: str | None = "auto", workers: int | None = None) -> Iterator[None]:
    """Make `executor` the default of every `run_tasks` call inside the block.

    A stage wraps its whole run in it, so each of its phases (filter, the dedup shuffle's steps,
    final write; tokenize encode) runs on the executor the user chose, with no other change.
    With `executor="ray"` it connects to Ray on entry (llmctl.executor.ray.connect), so an
    unreachable cluster is a one-line UsageError before the stage writes anything; `workers`
    sizes the local Ray instance started when there is no cluster (default: all cores).
    """
    _check(executor)
    if executor == "ray":
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
    _check(executor)
    if executor == "ray":
        address = ray_address if ray_address is not None else _DEFAULT["ray_address"]
        if names is None:
            names = [task_label(t, i) for i, t in enumerate(tasks)]
        return run_tasks_ray(fn, tasks, workers, progress, address=address, names=names)
    return run_local(fn, tasks, workers, progress)
