"""Run a stage's per-shard tasks on a Ray cluster: the same task function as the local executor.

Ray adds what one machine's process pool does not have: scheduling over many machines, retry
of a task whose worker process died (`max_retries`, default 3 attempts in all), and progress
counts sent back to the driver through a small actor. A task writes its shard under a
temporary name and marks itself done only at the end (llmctl.datasets), so a retried task
starts over cleanly and the output equals a clean run's. A task that fails on every attempt
is reported by name after the other tasks have finished; their output stays and a re-run
resumes.

Address: `auto` joins the cluster this machine belongs to (`ray start --head` / a Ray job),
`ray://host:10001` a remote one; when there is no cluster to join, a local Ray instance with
`workers` CPUs is started for the run. Every node must be able to import llmctl and see the
input and output paths: a shared filesystem, or fsspec URIs such as s3:// (llmctl.fs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from llmctl.errors import TaskFailed, UsageError
from llmctl.progress import StageProgress

T = TypeVar("T")
R = TypeVar("R")


def _init_ray(address: str | None, workers: int):
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'llmctl[ray]'") from None
    if ray.is_initialized():
        return ray
    import logging

    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address in (None, "", "auto"):
        try:
            ray.init(address="auto", **kwargs)
        except ConnectionError:
            ray.init(num_cpus=workers, include_dashboard=False, **kwargs)
    else:
        ray.init(address=address, **kwargs)
    return ray


class _Counts:
    """Progress counts sent by tasks, drained by the driver."""

    def __init__(self) -> None:
        self.pending: list[dict[str, int]] = []

    def add(self, counts: dict[str, int]) -> None:
        self.pending.append(counts)

    def drain(self) -> list[dict[str, int]]:
        out, self.pending = self.pending, []
        return out


_ACTOR: dict[str, Any] = {}


def _counts_actor(ray):
    """One progress actor per Ray session, shared by the phases of a stage (starting an actor
    costs a few hundred ms, and a filter run with dedup has seven phases)."""
    ctx = ray.get_runtime_context()
    job = f"{ctx.get_node_id()}/{ctx.get_job_id()}"  # a new ray.init is a new key, even on a restarted cluster
    if job not in _ACTOR:
        _ACTOR.clear()
        _ACTOR[job] = ray.remote(num_cpus=0)(_Counts).remote()
    return _ACTOR[job]


def run_tasks_ray(
    fn: Callable[[T, Any], R],
    tasks: Sequence[T],
    workers: int,
    progress: StageProgress | None,
    address: str | None = "auto",
    max_retries: int = 2,
    names: Sequence[str] | None = None,
) -> list[R]:
    """`fn(task, report)` for every task as Ray tasks; results in task order."""
    ray = _init_ray(address, workers)
    from llmctl.executor import Reporter

    counts = _counts_actor(ray)
    ray.get(counts.drain.remote())  # nothing left over from an earlier phase

    def _call(task: T) -> R:
        rep = Reporter(lambda c: counts.add.remote(c), interval=0.5)
        try:
            return fn(task, rep)
        finally:
            rep.flush()

    remote = ray.remote(num_cpus=1, max_retries=max_retries)(_call)
    refs = [remote.remote(t) for t in tasks]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(tasks)
    failed: list[tuple[int, str]] = []
    pending = list(refs)

    def pump() -> None:
        if progress is not None:
            for c in ray.get(counts.drain.remote()):
                progress.update(c)

    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
        pump()
        for ref in done:
            i = index[ref]
            try:
                results[i] = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - reported by task name below
                failed.append((i, str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__))
    time.sleep(0.1)
    pump()
    if failed:
        label = [names[i] if names else f"task {i}" for i, _ in failed]
        raise TaskFailed(
            f"{len(failed)} of {len(tasks)} shards failed after {max_retries + 1} attempts: {', '.join(label)} "
            f"(first error: {failed[0][1]}); the other shards are complete, re-run the same command to resume"
        )
    return results
