"""The Ray executor runs the same task functions as the local one: same results, retries when a
worker process dies, failures reported by task name (a local Ray instance with 2 CPUs). The Ray runs
write their output to file:// URIs, through fsspec, as they would to an object store."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import ray  # noqa: E402  (a test dependency: .[test])

from llmctl.errors import TaskFailed  # noqa: E402
from llmctl.executor import run_tasks  # noqa: E402
from llmctl.progress import StageProgress  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    from ray import cloudpickle

    import test_ray_executor

    cloudpickle.register_pickle_by_value(test_ray_executor)  # workers need not import this test module
    yield
    ray.shutdown()


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
    from llmctl.datasets import StageOutput

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
        run_tasks(filter_shard_dying_once, [(t, "always") for t in tasks], workers=2, executor="ray",
                  ray_address=None, names=names)
    again = StageOutput(tmp_path / "failing", "filter", cfg, [f.lineage for f in files])
    assert again.resumed_tasks == 2 and not again.task_done("part-00001")
    todo = [FilterTask(i, f, again, cfg) for i, f in enumerate(files) if not again.task_done(f"part-{i:05d}")]
    run_tasks(filter_shard_dying_once, [(t, marker) for t in todo], workers=2, executor="ray", ray_address=None)
    resumed = again.finalize(names, DOCUMENT_SCHEMA, stats=clean["stats"])
    assert resumed["shards"] == clean["shards"] and resumed["files"] == clean["files"]


def test_task_failing_every_attempt_is_named():
    with pytest.raises(TaskFailed, match=r"1 of 4 shards failed after 3 attempts: part-00002.*re-run"):
        run_tasks(always_die, list(range(4)), workers=2, executor="ray", ray_address=None,
                  names=[f"part-{i:05d}" for i in range(4)])


def test_filter_with_dedup_on_ray_equals_local(tmp_path):
    import shutil

    from llmctl.data.filter import FilterConfig, run_filter

    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):  # two copies of a real crawl file: everything in the second is an exact duplicate
        shutil.copy("examples/crawl/crawl-00000.warc.gz", d / f"crawl-{i}.warc.gz")
    local = run_filter([str(d)], tmp_path / "local", FilterConfig(workers=2), progress=False)
    # Ray workers write through fsspec here (a file:// URI, as they would to s3:// on a cluster)
    on_ray = run_filter([str(d)], f"file://{tmp_path}/ray", FilterConfig(workers=2, executor="ray", ray_address=None),
                        progress=False)
    assert on_ray["fingerprint"] == local["fingerprint"]
    assert on_ray["stats"]["funnel"] == local["stats"]["funnel"]
    assert any(r["row"] == "rejected.dedup.exact" and r["docs"] > 0 for r in local["stats"]["funnel"])
    for s in local["shards"] + local["files"]["rejected"]:
        assert (tmp_path / "local" / s["path"]).read_bytes() == (tmp_path / "ray" / s["path"]).read_bytes()


def test_tokenize_encode_on_ray_equals_local(tmp_path):
    from llmctl.data.tokenize import EncodeConfig, TokenizerTrainConfig, run_encode, run_train
    from tokenize_helpers import tinystories_docs, write_documents

    docs = tinystories_docs(300)
    write_documents(tmp_path / "docs", [docs[:100], docs[100:200], docs[200:]])
    run_train([str(tmp_path / "docs")], tmp_path / "tok", TokenizerTrainConfig(vocab_size=600))
    local = run_encode(tmp_path / "docs", tmp_path / "tok", tmp_path / "local", EncodeConfig(workers=2), progress=False)
    on_ray = run_encode(f"file://{tmp_path}/docs", tmp_path / "tok", f"file://{tmp_path}/ray",
                        EncodeConfig(workers=2, executor="ray", ray_address=None), progress=False)
    assert on_ray["shards"] == local["shards"] and on_ray["stats"] == local["stats"]
    assert on_ray["inputs"][0]["path"] == f"file://{tmp_path}/docs"
    for s in local["shards"]:
        assert (tmp_path / "local" / s["path"]).read_bytes() == (tmp_path / "ray" / s["path"]).read_bytes()
