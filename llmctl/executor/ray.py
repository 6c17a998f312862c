"""Run a stage's per-shard tasks on a Ray cluster: the same task function as the local executor.

Tasks are retried (`max_retries`: when a task's worker process dies and when the task raises),
report progress to the driver through a small actor, and carry their shard's name. A task that
fails on every attempt is reported by name once the others have finished; their output stays and
a re-run resumes. A `UsageError` raised in a task is not retried. Every node must be able to import
llmctl and see the input and output paths (a shared filesystem, or fsspec URIs: llmctl.store.fs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from llmctl.errors import TaskFailed, UsageError
from llmctl.executor.base import TRACEBACK_ENV, Reporter
from llmctl.utils.progress import StageProgress

T = TypeVar("T")
R = TypeVar("R")

AUTO_PROBE_S = 2.0  # an `auto` address that does not answer in this time is a cluster that is gone
EXPLICIT_PROBE_S = 3.0  # an address given by the user that does not answer is an error


def _import_ray():
    try:
        import ray  # an optional extra (llmctl[ray]), heavy to import
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'llmctl[ray]'") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `HOST:PORT` or `ray://HOST[:PORT]`; None when it cannot be parsed."""
    client = address.startswith("ray://")
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or port.startswith("]"):  # no port, or an IPv6 address without one
        host, port = rest, "10001" if client else "6379"
    host = host.strip("[]")
    try:
        return (host, int(port)) if host else None
    except ValueError:
        return None


def _answers(address: str, timeout: float) -> bool:
    hp = _host_port(address)
    if hp is None:
        return True  # not ours to judge: ray.init reports it
    try:
        with socket.create_connection(hp, timeout=timeout):
            return True
    except OSError:
        return False


def _auto_address(ray) -> tuple[str | None, str]:
    """The cluster `auto` means, found the way Ray finds it, and where it came from; None: none."""
    try:
        from ray._private import services  # ray: optional, imported only once a run uses it
    except ImportError:
        return "auto", "ray"
    try:
        found = services.get_ray_address_from_environment("auto", None)
    except ConnectionError:
        return None, ""
    except Exception:  # noqa: BLE001 - a Ray internal that changed: let ray.init look for itself
        return "auto", "ray"
    recorded = None
    with contextlib.suppress(Exception):
        recorded = ray._private.utils.read_ray_address(None)
    if found and recorded and found == recorded:
        with contextlib.suppress(Exception):
            return found, ray._private.utils.get_ray_address_file(None)
        return found, "/tmp/ray/ray_current_cluster"
    return found, "a running Ray process"


AUTH_HINT = (
    "the cluster uses token authentication and this machine's token is missing or not the cluster's: "
    "set RAY_AUTH_MODE=token and give it the cluster's token (~/.ray/auth_token, RAY_AUTH_TOKEN or "
    "RAY_AUTH_TOKEN_PATH; `ray get-auth-token` on the head node prints it)"
)


def _is_auth_error(e: BaseException) -> bool:
    """Whether `e`, or an exception it was raised from, says the cluster refused our token."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = f"{type(cur).__name__} {cur}".lower()
        if "authenticationerror" in text or "invalidauthtoken" in text or ("token" in text and "auth" in text):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _connect_error(shown: str, e: BaseException) -> UsageError:
    if _is_auth_error(e):
        hint = AUTH_HINT
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            hint = hint.replace("set RAY_AUTH_MODE=token and give it", "RAY_AUTH_MODE=token is set; give this machine")
        return UsageError(f"cannot connect to Ray at {shown}: {hint}")
    text = str(e).strip()
    last = text.splitlines()[-1].strip() if text else type(e).__name__
    return UsageError(f"cannot connect to Ray at {shown}: {last[:300]}")


def _check_gcs(address: str, shown: str, timeout: float = 10.0) -> None:
    """Ask the GCS at `address` for its cluster id, once: a cluster with token authentication
    refuses in a fraction of a second here, where ray.init retries for 20 s. Only a refusal is
    reported; anything else (no answer in `timeout`, a Ray internal that changed) is left to ray.init."""
    try:
        from ray._raylet import GcsClient  # ray: optional, imported only once a run uses it
    except ImportError:
        return

    result: list[BaseException | None] = []

    def probe() -> None:
        try:
            GcsClient(address=address)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - judged below
            result.append(e)

    t = threading.Thread(target=probe, daemon=True, name="llmctl-ray-probe")
    t.start()
    t.join(timeout)
    if result and result[0] is not None and _is_auth_error(result[0]):
        raise _connect_error(shown, result[0]) from result[0]


def _init(ray, address: str, shown: str, **kwargs: Any) -> None:
    if address not in ("local", "auto") and "://" not in address:
        _check_gcs(address, shown)
    try:
        ray.init(address=address, **kwargs)
    except Exception as e:  # noqa: BLE001 - one line instead of Ray's traceback
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise _connect_error(shown, e) from e


def connect(address: str | None, workers: int):
    """Connect to (or start) the Ray instance the stage runs on; returns the `ray` module.

    `auto` joins the cluster this machine belongs to (`RAY_ADDRESS`, else the one `ray start`
    recorded in /tmp/ray/ray_current_cluster, else a running local GCS) once a 2 s TCP connect
    shows it answers; when there is no cluster, or the recorded one is gone (killed without
    `ray stop`), a local instance with `workers` CPUs is started for the run (the latter with a
    one-line notice). `local` always starts one. `HOST:PORT` and `ray://HOST:10001` (Ray Client)
    are used as given; one that does not answer within 3 s, and any failure of `ray.init` (e.g.
    a token-authenticated cluster this machine has no token for), is a one-line UsageError.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return ray

    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    local = dict(kwargs, num_cpus=workers, include_dashboard=False)
    address = (address or "auto").strip()
    if address == "local":
        _init(ray, "local", "a new local instance", **local)
        return ray
    shown = address
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "").strip()
        if env:
            address, shown = env, f"{env} (RAY_ADDRESS)"
        else:
            found, source = _auto_address(ray)
            if found is None:  # no cluster on this machine: a local instance for the run
                _init(ray, "local", "a new local instance", **local)
                return ray
            if found != "auto" and not _answers(found, AUTO_PROBE_S):
                print(
                    f"llmctl: no Ray cluster answers at {found} (recorded in {source}: stopped without "
                    f"`ray stop`?); starting a local Ray instance with {workers} CPU{'s' if workers != 1 else ''}",
                    file=sys.stderr,
                )
                _init(ray, "local", "a new local instance", **local)
                return ray
            _init(ray, found, f"{found} (from {source})" if found != "auto" else "auto", **kwargs)
            return ray
    if "://" in address:
        if not address.startswith("ray://"):
            raise UsageError(f"--ray-address {address}: expected HOST:PORT, ray://HOST:10001 or auto")
        try:
            import grpc  # noqa: F401 - what `ray[client]` adds
        except ImportError:
            raise UsageError(f'--ray-address {address} (Ray Client) needs: pip install "ray[client]"') from None
    if not _answers(address, EXPLICIT_PROBE_S):
        hp = _host_port(address)
        raise UsageError(
            f"no Ray cluster answers at {shown} (no TCP connection to {hp[0]}:{hp[1]} within "
            f"{EXPLICIT_PROBE_S:.0f} s); check the address (`ray status` on the head node prints it), "
            "or use --ray-address auto"
        )
    _init(ray, address, shown, **kwargs)
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


class _Usage:
    """A UsageError raised in a task, returned rather than raised so that Ray does not retry it."""

    def __init__(self, message: str) -> None:
        self.message = message


def _error_line(e: BaseException) -> str:
    """The last line of a Ray error: the task's own exception (`ValueError: ...`) for a task that
    raised, Ray's last sentence for a worker that died."""
    text = str(e).strip()
    return text.splitlines()[-1].strip()[:300] if text else type(e).__name__


def run_tasks_ray(
    fn: Callable[[T, Any], R],
    tasks: Sequence[T],
    workers: int,
    progress: StageProgress | None,
    address: str | None = "auto",
    max_retries: int = 2,
    names: Sequence[str] | None = None,
) -> list[R]:
    """`fn(task, report)` for every task as Ray tasks, each named after its shard; results in task order."""
    ray = connect(address, workers)
    if names is None:
        names = [f"task {i}" for i in range(len(tasks))]
    counts = _counts_actor(ray)
    ray.get(counts.drain.remote())  # nothing left over from an earlier phase

    def _call(task: T) -> R | _Usage:
        rep = Reporter(lambda c: counts.add.remote(c), interval=0.5)
        try:
            return fn(task, rep)
        except UsageError as e:
            return _Usage(str(e))
        finally:
            rep.flush()

    remote = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=True)(_call)
    refs = [remote.options(name=str(names[i])[:200]).remote(t) for i, t in enumerate(tasks)]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(tasks)
    failed: list[tuple[int, BaseException]] = []
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
                failed.append((i, e))
                continue
            if isinstance(results[i], _Usage):  # the user's to fix, and the same for every shard
                for r in pending:
                    with contextlib.suppress(Exception):
                        ray.cancel(r)
                raise UsageError(results[i].message)
    time.sleep(0.1)
    pump()
    if failed:
        failed.sort()
        first = failed[0][1]
        if os.environ.get(TRACEBACK_ENV):
            print(str(first), file=sys.stderr)
        rest = (
            "no shard completed; re-run the same command to retry"
            if len(failed) == len(tasks)
            else f"the other {len(tasks) - len(failed)} are complete and kept; re-run the same command to resume"
        )
        hint = "" if os.environ.get(TRACEBACK_ENV) else f"; {TRACEBACK_ENV}=1 prints the first traceback"
        raise TaskFailed(
            f"{len(failed)} of {len(tasks)} shards failed after {max_retries + 1} attempts: "
            f"{', '.join(str(names[i]) for i, _ in failed)} (first error: {_error_line(first)}); "
            f"{rest}{hint}"
        ) from first
    return results
