"""OUT/_stats.json: per-step documents in and out, time and reasons, merged over tasks and workers,
adding up to the funnel of the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmctl.data.filter import FilterConfig, run_filter

pytestmark = pytest.mark.slow  # the default steps on a real crawl file

CRAWL = Path("examples/crawl/crawl-00000.warc.gz")


def run(tmp_path: Path, name: str, copies: int, workers: int) -> tuple[dict, dict]:
    d = tmp_path / f"in-{name}"
    d.mkdir()
    for i in range(copies):
        shutil.copy(CRAWL, d / f"crawl-{i}.warc.gz")
    block = tmp_path / "block.txt"
    block.write_text("data.gov.uk\n")
    cfg = FilterConfig(workers=workers)
    cfg.url.blocklist = [str(block)]
    m = run_filter([str(d)], tmp_path / name, cfg, progress=False)
    return m, json.loads((tmp_path / name / "_stats.json").read_text())


def test_stats_add_up_to_the_funnel_and_merge_over_workers(tmp_path):
    m, stats = run(tmp_path, "one", copies=1, workers=1)
    steps = stats["steps"]
    names = [s["step"] for s in steps]
    assert names == ["url", "extract", "langid", "gopher_repetition", "gopher_quality", "c4", "pii", "dedup"]
    funnel = {r["row"]: r for r in m["stats"]["funnel"]}
    read, kept = funnel.pop("read"), funnel.pop("kept")
    assert stats["read"] == {"docs": read["docs"], "bytes": read["bytes"]}
    assert stats["kept"] == {"docs": kept["docs"], "bytes": kept["bytes"]}
    reasons = {}
    for s in steps:
        assert s["docs_in"] - s["docs_out"] == sum(r["docs"] for r in s["reasons"].values()), s["step"]
        assert s["seconds"] >= 0
        assert not set(s["reasons"]) & set(reasons)  # a reason belongs to one step
        reasons.update(s["reasons"])
    assert reasons == {k: {"docs": r["docs"], "bytes": r["bytes"]} for k, r in funnel.items()}
    assert steps[0]["docs_in"] == read["docs"] and steps[0]["docs_out"] == read["docs"] - 10  # 10 data.gov.uk pages
    assert steps[1]["docs_in"] == steps[0]["docs_out"]
    for before, after in zip(steps[1:], steps[2:]):  # docs_in is counted where the step runs: independent
        assert before["docs_out"] == after["docs_in"], after["step"]
    assert steps[-1]["docs_out"] == kept["docs"]

    _, two = run(tmp_path, "two", copies=2, workers=2)  # two tasks on two workers, merged
    for a, b in zip(steps[:-1], two["steps"][:-1]):  # per-shard steps: each copy counts the same
        assert b["docs_in"] == 2 * a["docs_in"] and b["docs_out"] == 2 * a["docs_out"], a["step"]
        assert {k: v["docs"] * 2 for k, v in a["reasons"].items()} == {k: v["docs"] for k, v in b["reasons"].items()}
    dedup = two["steps"][-1]
    assert dedup["docs_in"] == 2 * steps[-1]["docs_in"] and dedup["docs_out"] == kept["docs"]  # the copy is a duplicate
