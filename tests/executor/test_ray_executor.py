"""The Ray executor runs the same task functions as the local one: same results, retries when a
worker process dies or a task raises, failures reported by task name (a local Ray instance with 2
CPUs), each Ray task named after its shard. Connecting fails fast, in one line, or falls back to a
local instance when the recorded cluster is gone. The Ray runs write their output to file:// URIs,
through fsspec, as they would to an object store."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray  # noqa: E402  (a test dependency: .[test])

from llmctl.errors import TaskFailed, UsageError  # noqa: E402
from llmctl.executor import run_tasks, using  # noqa: E402
from llmctl.utils.progress import StageProgress  # noqa: E402

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    import test_ray_executor
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(test_ray_executor)  # workers need not import this test module
    yield
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_ray(monkeypatch):
    """Connection tests start from no Ray session, and no RAY_ADDRESS."""
    ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


# Connecting: these run first, before the module's tests share one local Ray instance.


def test_explicit_address_that_does_not_answer_fails_fast(no_ray, tmp_path):
    from llmctl.data.filter import FilterConfig, run_filter

    addr = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=rf"no Ray cluster answers at {addr} .*within 3 s"):
        with using("ray", addr):
            pass
    assert time.monotonic() - t0 < 10 and not ray.is_initialized()
    # a stage connects before it creates its output directory
    with pytest.raises(UsageError, match="no Ray cluster answers"):
        run_filter(
            ["examples/crawl/crawl-00000.warc.gz"],
            tmp_path / "out",
            FilterConfig(workers=2, executor="ray", ray_address=addr),
            progress=False,
        )
    assert not (tmp_path / "out").exists()


def test_ray_client_address_without_ray_client_installed(no_ray, monkeypatch):
    monkeypatch.setitem(sys.modules, "grpc", None)  # as if ray[client] (grpcio) were not installed
    with pytest.raises(UsageError, match=r'pip install "ray\[client\]"'):
        with using("ray", "ray://127.0.0.1:10001"):
            pass


def test_token_auth_refusal_is_one_line_with_the_fix(no_ray, monkeypatch):
    """A cluster with token authentication that refuses this machine's token: what ray.init
    retries for 20 s and prints ~60 lines for is one line naming RAY_AUTH_MODE."""
    import ray._raylet
    from ray.exceptions import AuthenticationError

    def refuse(*a, **k):
        raise AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect.")

    with socket.socket() as server:  # something listens: the TCP probe passes
        server.bind(("127.0.0.1", 0))
        server.listen()
        addr = f"127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setattr(ray._raylet, "GcsClient", refuse)
        with pytest.raises(UsageError) as ei:
            with using("ray", addr):
                pass
        msg = str(ei.value)
        assert "\n" not in msg and msg.startswith(f"cannot connect to Ray at {addr}: the cluster uses token")
        assert "RAY_AUTH_MODE=token" in msg

        # the same refusal reported by ray.init itself (chained under its ConnectionError)
        monkeypatch.setattr(ray._raylet, "GcsClient", lambda *a, **k: None)

        def init(*a, **k):
            try:
                refuse()
            except AuthenticationError as e:
                raise ConnectionError(f"Failed to connect to Ray cluster at {addr}") from e

        monkeypatch.setattr(ray, "init", init)
        with pytest.raises(UsageError, match="token authentication.*RAY_AUTH_MODE=token"):
            with using("ray", addr):
                pass

        def init_fails(*a, **k):
            raise RuntimeError("Failed to connect to GCS.\nLast line: version mismatch")

        monkeypatch.setattr(ray, "init", init_fails)
        with pytest.raises(UsageError, match=rf"^cannot connect to Ray at {addr}: Last line: version mismatch$"):
            with using("ray", addr):
                pass


def test_stale_recorded_cluster_falls_back_to_a_local_instance(no_ray, monkeypatch, capfd):
    """`ray start` recorded a cluster whose processes were then killed (no `ray stop`): `auto`
    starts a local instance with a one-line notice instead of retrying the dead address."""
    import ray._private.utils

    dead = f"127.0.0.1:{free_port()}"
    monkeypatch.setattr(ray._private.utils, "read_ray_address", lambda temp_dir=None: dead)
    t0 = time.monotonic()
    with using("ray", "auto", workers=2):
        assert ray.is_initialized()
    assert time.monotonic() - t0 < 20  # ray.init("auto") retried the dead address for 20 s, twice
    err = capfd.readouterr().err
    assert f"llmctl: no Ray cluster answers at {dead}" in err and "starting a local Ray instance with 2 CPUs" in err
    assert ray.cluster_resources().get("CPU") == 2
    # the module's other tests run on this instance


def square(task: int, report) -> int:
    report(docs=1, bytes=task)
    return task * task


def die_once(task: tuple[int, str], report) -> int:
    """Kill this worker process the first time task 1 runs: a crash mid-shard."""
    n, marker = task
    if n == 1 and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return n * 10


def always_die(task: int, report) -> int:
    if task == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return task


def test_results_in_order_with_progress():
    with StageProgress("test", 100, enabled=False) as prog:
        out = run_tasks(square, list(range(6)), workers=2, progress=prog, executor="ray", ray_address=None)
    assert out == [i * i for i in range(6)]
    assert prog.counts["docs"] == 6 and prog.counts["bytes"] == sum(range(6))
    assert out == run_tasks(square, list(range(6)), workers=2)  # the local executor agrees


def test_dead_worker_is_retried(tmp_path):
    marker = str(tmp_path / "crashed-once")
    out = run_tasks(die_once, [(i, marker) for i in range(4)], workers=2, executor="ray", ray_address=None)
    assert out == [0, 10, 20, 30]
    assert os.path.exists(marker)  # the first attempt did die


def filter_shard_dying_once(task: tuple, report) -> dict:
    """The real filter task; shard 1's worker is SIGKILLed mid-shard, after some documents were
    written to its temporary file: on its first attempt, or on every one when marker is "always"."""
    from llmctl.data.filter import filter_task

    ftask, marker = task
    seen = [0]

    def rep(**counts) -> None:
        seen[0] += counts.get("docs", 0)
        if ftask.index == 1 and seen[0] == 20 and (marker == "always" or not os.path.exists(marker)):
            if marker != "always":
                Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        report(**counts)

    return filter_task(ftask, rep)


def test_worker_killed_mid_filter_shard_gives_the_clean_output(tmp_path):
    import shutil

    from llmctl.data.document import DOCUMENT_SCHEMA
    from llmctl.data.filter import FilterConfig, FilterTask, resolve_inputs, run_filter
    from llmctl.store.dataset import StageOutput

    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):
        shutil.copy("examples/crawl/crawl-00000.warc.gz", d / f"crawl-{i}.warc.gz")
    cfg = FilterConfig(workers=2)
    cfg.dedup.exact = cfg.dedup.minhash = cfg.dedup.c4_span = False  # the per-shard phase only
    clean = run_filter([str(d)], tmp_path / "clean", cfg, progress=False)
    files = resolve_inputs([str(d)], cfg.extract)
    out = StageOutput(tmp_path / "killed", "filter", cfg, [f.lineage for f in files])
    marker = str(tmp_path / "killed-once")
    tasks = [FilterTask(i, f, out, cfg) for i, f in enumerate(files)]
    run_tasks(filter_shard_dying_once, [(t, marker) for t in tasks], workers=2, executor="ray", ray_address=None)
    assert os.path.exists(marker)  # shard 1's first attempt did die
    names = [t.name for t in tasks]
    killed = out.finalize(names, DOCUMENT_SCHEMA, stats=clean["stats"])
    assert killed["shards"] == clean["shards"] and killed["files"] == clean["files"]
    assert not list((tmp_path / "killed").rglob(".*.tmp*"))  # no leftover of the killed attempt

    # a shard whose worker dies on every attempt: named, the other shards' output stays, and a
    # re-run (here without the fault) redoes only that shard and ends with the clean output
    out = StageOutput(tmp_path / "failing", "filter", cfg, [f.lineage for f in files])
    tasks = [FilterTask(i, f, out, cfg) for i, f in enumerate(files)]
    with pytest.raises(TaskFailed, match=r"1 of 3 shards failed after 3 attempts: part-00001"):
        run_tasks(
            filter_shard_dying_once,
            [(t, "always") for t in tasks],
            workers=2,
            executor="ray",
            ray_address=None,
            names=names,
        )
    again = StageOutput(tmp_path / "failing", "filter", cfg, [f.lineage for f in files])
    assert again.resumed_tasks == 2 and not again.task_done("part-00001")
    todo = [FilterTask(i, f, again, cfg) for i, f in enumerate(files) if not again.task_done(f"part-{i:05d}")]
    run_tasks(filter_shard_dying_once, [(t, marker) for t in todo], workers=2, executor="ray", ray_address=None)
    resumed = again.finalize(names, DOCUMENT_SCHEMA, stats=clean["stats"])
    assert resumed["shards"] == clean["shards"] and resumed["files"] == clean["files"]


def test_task_failing_every_attempt_is_named():
    with pytest.raises(
        TaskFailed,
        match=r"1 of 4 shards failed after 3 attempts: part-00002 \(first error: The worker "
        r"died.*\); the other 3 are complete and kept; re-run",
    ):
        run_tasks(
            always_die,
            list(range(4)),
            workers=2,
            executor="ray",
            ray_address=None,
            names=[f"part-{i:05d}" for i in range(4)],
        )


def fail_on_2(task: tuple[int, str, str], report) -> int:
    """Task 2 raises a ValueError on every attempt ("always") or on the first only ("once"), or a
    UsageError ("usage"). Each attempt leaves a line in the log file."""
    n, log, mode = task
    if n == 2:
        with open(log, "a") as f:
            f.write("attempt\n")
        if mode == "usage":
            raise UsageError("input 2: not a WARC file")
        if mode == "always" or Path(log).read_text().count("attempt") == 1:
            raise ValueError(f"cannot parse record {n}")
    return n


def test_raising_task_is_retried_then_named(tmp_path):
    log = str(tmp_path / "attempts")
    out = run_tasks(fail_on_2, [(i, log, "once") for i in range(4)], workers=2, executor="ray", ray_address=None)
    assert out == [0, 1, 2, 3]  # a transient error: the second attempt succeeded
    assert Path(log).read_text().count("attempt") == 2

    log = str(tmp_path / "attempts-always")
    with pytest.raises(TaskFailed) as ei:
        run_tasks(
            fail_on_2,
            [(i, log, "always") for i in range(4)],
            workers=2,
            executor="ray",
            ray_address=None,
            names=[f"part-{i:05d}" for i in range(4)],
        )
    assert Path(log).read_text().count("attempt") == 3  # the message's "3 attempts" is true
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(
        "1 of 4 shards failed after 3 attempts: part-00002 (first error: ValueError: cannot parse "
        "record 2); the other 3 are complete and kept; re-run the same command to resume"
    )
    assert isinstance(ei.value.__cause__, ValueError)  # Ray's RayTaskError(ValueError), chained


def test_usage_error_in_a_ray_task_is_not_retried(tmp_path):
    log = str(tmp_path / "attempts")
    with pytest.raises(UsageError, match="not a WARC file"):
        run_tasks(fail_on_2, [(i, log, "usage") for i in range(4)], workers=2, executor="ray", ray_address=None)
    assert Path(log).read_text().count("attempt") == 1


def test_every_shard_failing_says_none_completed():
    with pytest.raises(
        TaskFailed,
        match=r"^3 of 3 shards failed after 3 attempts: task 0, task 1, task 2 "
        r"\(first error: .*\); no shard completed; re-run",
    ):
        run_tasks(always_die, [2, 2, 2], workers=2, executor="ray", ray_address=None)


@dataclass
class Labelled:
    index: int

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    @property
    def label(self) -> str:
        return f"{self.name} (crawl-{self.index:05d}.warc.gz)"


def task_name_and_title(task: Labelled, report) -> tuple[str, str]:
    title = (
        Path("/proc/self/cmdline").read_text().replace("\0", " ").strip()
        if os.path.exists("/proc/self/cmdline")
        else ""
    )
    return ray.get_runtime_context().get_task_name(), title


def test_ray_tasks_carry_their_shard_label():
    out = run_tasks(task_name_and_title, [Labelled(i) for i in range(3)], workers=2, executor="ray", ray_address=None)
    for i, (name, title) in enumerate(out):
        assert name == f"part-{i:05d} (crawl-{i:05d}.warc.gz)"  # ray list tasks, the dashboard
        if title:
            assert title.startswith(f"ray::part-{i:05d}")  # ps / top


def test_filter_with_dedup_on_ray_equals_local(tmp_path):
    import shutil

    from llmctl.data.filter import FilterConfig, run_filter

    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):  # two copies of a real crawl file: everything in the second is an exact duplicate
        shutil.copy("examples/crawl/crawl-00000.warc.gz", d / f"crawl-{i}.warc.gz")
    local = run_filter([str(d)], tmp_path / "local", FilterConfig(workers=2), progress=False)
    # Ray workers write through fsspec here (a file:// URI, as they would to s3:// on a cluster)
    on_ray = run_filter(
        [str(d)], f"file://{tmp_path}/ray", FilterConfig(workers=2, executor="ray", ray_address=None), progress=False
    )
    assert on_ray["fingerprint"] == local["fingerprint"]
    assert on_ray["stats"]["funnel"] == local["stats"]["funnel"]
    assert any(r["row"] == "rejected.dedup.exact" and r["docs"] > 0 for r in local["stats"]["funnel"])
    for s in local["shards"]:
        assert (tmp_path / "local" / s["path"]).read_bytes() == (tmp_path / "ray" / s["path"]).read_bytes()
    for s in local["files"]["rejected"]:
        assert (tmp_path / "local.rejected" / s["path"]).read_bytes() == (
            tmp_path / "ray.rejected" / s["path"]
        ).read_bytes()


def test_tokenize_encode_on_ray_equals_local(tmp_path):
    from tokenize_helpers import tinystories_docs, write_documents

    from llmctl.data.tokenize import EncodeConfig, TokenizerTrainConfig, run_encode, run_train

    docs = tinystories_docs(300)
    write_documents(tmp_path / "docs", [docs[:100], docs[100:200], docs[200:]])
    run_train([str(tmp_path / "docs")], tmp_path / "tok", TokenizerTrainConfig(vocab_size=600))
    local = run_encode(tmp_path / "docs", tmp_path / "tok", tmp_path / "local", EncodeConfig(workers=2), progress=False)
    on_ray = run_encode(
        f"file://{tmp_path}/docs",
        tmp_path / "tok",
        f"file://{tmp_path}/ray",
        EncodeConfig(workers=2, executor="ray", ray_address=None),
        progress=False,
    )
    assert on_ray["shards"] == local["shards"] and on_ray["stats"] == local["stats"]
    assert on_ray["inputs"][0]["path"] == f"file://{tmp_path}/docs"
    for s in local["shards"]:
        assert (tmp_path / "local" / s["path"]).read_bytes() == (tmp_path / "ray" / s["path"]).read_bytes()
