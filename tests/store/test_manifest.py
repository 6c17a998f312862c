"""The one manifest writer: the keys every output's `_manifest.json` has, and old manifests still read."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from llmctl import __version__
from llmctl.store.manifest import MANIFEST, finished_at, write_manifest

COMMON = {"stage", "llmctl_version", "config", "inputs", "stats", "timings"}


def test_write_manifest_fills_the_common_keys(tmp_path):
    got = write_manifest(tmp_path, {"stage": "export", "model": {"d_model": 8}, "timings": {"seconds": 1.5}})
    on_disk = json.loads((tmp_path / MANIFEST).read_text())
    assert on_disk == got
    assert COMMON <= set(got) and got["llmctl_version"] == __version__
    assert got["config"] == {} and got["inputs"] == [] and got["stats"] == {} and got["model"] == {"d_model": 8}
    assert got["timings"]["seconds"] == 1.5 and finished_at(got) == got["timings"]["finished"]
    assert "created" not in got and "finished" not in got  # one time stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]  # no temporary file left
    with pytest.raises(ValueError):
        write_manifest(tmp_path, {"config": {}})


def test_dataset_manifest_has_the_common_keys(tmp_path):
    import pyarrow as pa

    from llmctl.store.dataset import StageOutput

    @dataclass
    class Cfg:
        n: int = 1

    out = StageOutput(tmp_path / "d", "test", Cfg(), [{"path": "/in", "fingerprint": "abc"}])
    m = out.finalize([], pa.schema([("id", pa.string())]))
    assert COMMON <= set(m) and finished_at(m) and {"seconds", "resumed_tasks"} <= set(m["timings"])


@pytest.mark.parametrize(
    "old",
    [
        {"stage": "pretrain", "llmctl_version": "0.1.0", "finished": "2026-01-02T03:04:05Z"},  # a training run
        {"stage": "checkpoint", "llmctl_version": "0.1.0", "created": "2026-01-02T03:04:05Z"},  # a checkpoint
        {"stage": "export", "created": "2026-01-02T03:04:05Z"},  # an export (no version field)
        {"stage": "tokenizer", "timings": {"finished": "2026-01-02T03:04:05Z"}},  # datasets, tokenizers, quality
    ],
)
def test_finished_at_reads_old_manifests(old):
    assert finished_at(old) == "2026-01-02T03:04:05Z"


def test_old_style_run_manifest_still_reads_as_complete(tmp_path):
    from llmctl.train.run_dir import prepare_run_dir, run_state

    @dataclass
    class Cfg:
        lr: float = 0.1

    inputs = [{"path": "/tokens", "fingerprint": "f1"}]
    old = {  # what a run wrote before the one writer: a top-level `finished`, no `timings`
        "stage": "pretrain",
        "config": {"lr": 0.1},
        "inputs": inputs,
        "llmctl_version": "0.1.0",
        "finished": "2026-01-02T03:04:05Z",
        "model": {},
        "stats": {"finished": True, "val_loss": 2.5},
        "run_state": run_state("pretrain", Cfg(), inputs),
    }
    (tmp_path / MANIFEST).write_text(json.dumps(old))
    plan = prepare_run_dir(tmp_path, "pretrain", Cfg(), inputs, overwrite=False)
    assert plan.status == "complete" and plan.manifest["stats"]["val_loss"] == 2.5
    assert finished_at(plan.manifest) == "2026-01-02T03:04:05Z"
