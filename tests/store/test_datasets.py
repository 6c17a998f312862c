"""The dataset contract: atomic shards, manifest last, resume, refuse on a different config."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pytest

from llmctl.config import runtime
from llmctl.errors import UsageError
from llmctl.store.dataset import MANIFEST, RUN_STATE, Dataset, StageOutput

SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])


@dataclass
class Cfg:
    threshold: int = 3
    workers: int | None = runtime(None)


def write_task(out: StageOutput, name: str, rows: list[dict]) -> None:
    w = out.shard_writer(f"{name}.parquet", SCHEMA)
    for r in rows:
        w.write(r)
    out.finish_task(name, {"data": [{"path": f"{name}.parquet", **w.close()}]}, {"rows": len(rows)})


def make(path, cfg=None, overwrite=False, rows=None):
    out = StageOutput(path, "test", cfg or Cfg(), [{"path": "/in", "fingerprint": "abc"}], overwrite=overwrite)
    if not out.complete:
        write_task(out, "part-00000", rows or [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
        write_task(out, "part-00001", [{"id": "c", "text": "z"}])
        out.finalize(["part-00000", "part-00001"], SCHEMA, stats={"n": 3})
    return out


def test_write_then_open(tmp_path):
    make(tmp_path / "ds")
    ds = Dataset.open(tmp_path / "ds", stage="test", columns=["text"])
    assert ds.num_rows == 3
    assert [r["id"] for r in ds.iter_rows()] == ["a", "b", "c"]
    m = ds.manifest
    assert m["stage"] == "test" and m["config"]["threshold"] == 3 and m["stats"] == {"n": 3}
    assert [s["rows"] for s in m["shards"]] == [2, 1]
    assert m["inputs"] == [{"path": "/in", "fingerprint": "abc"}]
    assert {f["name"] for f in m["schema"]} == {"id", "text"}
    assert len(m["fingerprint"]) == 64
    # no in-progress state, no temporary files left behind
    assert not (tmp_path / "ds" / RUN_STATE).exists()
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [MANIFEST, "part-00000.parquet", "part-00001.parquet"]


def test_open_refuses_unfinished_and_wrong_inputs(tmp_path):
    with pytest.raises(UsageError, match="no such dataset"):
        Dataset.open(tmp_path / "missing")
    out = StageOutput(tmp_path / "half", "test", Cfg(), [])
    write_task(out, "part-00000", [{"id": "a", "text": "x"}])  # killed before finalize
    with pytest.raises(UsageError, match="not an llmctl dataset.*not finished"):
        Dataset.open(tmp_path / "half")
    make(tmp_path / "ds")
    with pytest.raises(UsageError, match="expected 'tokens'"):
        Dataset.open(tmp_path / "ds", stage="tokens")
    with pytest.raises(UsageError, match="no column 'input_ids'"):
        Dataset.open(tmp_path / "ds", columns=["input_ids"])


def test_same_config_is_complete_and_resumes(tmp_path):
    first = make(tmp_path / "ds")
    again = StageOutput(tmp_path / "ds", "test", Cfg(workers=7), [{"path": "/in", "fingerprint": "abc"}])
    assert again.complete  # a worker count is not part of the output's identity
    assert again.manifest["fingerprint"] == first.manifest["fingerprint"]

    out = StageOutput(tmp_path / "r", "test", Cfg(), [])
    write_task(out, "part-00000", [{"id": "a", "text": "x"}])
    resumed = StageOutput(tmp_path / "r", "test", Cfg(), [])
    assert resumed.resumed_tasks == 1 and resumed.task_done("part-00000") and not resumed.task_done("part-00001")


def test_different_config_refuses_unless_overwrite(tmp_path):
    make(tmp_path / "ds")
    with pytest.raises(UsageError, match=r"different run \(changed: config.threshold\).*--overwrite"):
        make(tmp_path / "ds", cfg=Cfg(threshold=4))
    # an interrupted run with another config refuses too
    StageOutput(tmp_path / "half", "test", Cfg(), [])
    with pytest.raises(UsageError, match="different run"):
        StageOutput(tmp_path / "half", "test", Cfg(threshold=9), [])
    make(tmp_path / "ds", cfg=Cfg(threshold=4), overwrite=True, rows=[{"id": "q", "text": "new"}])
    ds = Dataset.open(tmp_path / "ds")
    assert ds.manifest["config"]["threshold"] == 4 and ds.num_rows == 2


def test_refuses_foreign_nonempty_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        StageOutput(tmp_path / "mine", "test", Cfg(), [], overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_manifest_is_valid_json_with_timings(tmp_path):
    make(tmp_path / "ds")
    m = json.loads((tmp_path / "ds" / MANIFEST).read_text())
    assert m["timings"]["seconds"] >= 0 and m["llmctl_version"]
