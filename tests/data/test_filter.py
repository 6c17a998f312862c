"""`llmctl filter` end to end: funnel accounting, worker invariance, kill-and-resume, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from run_helpers import kill_and_resume
from warc_utils import GOOD_PARAGRAPHS, html_page, response_record, write_warc_gz

from llmctl.data.filter import FilterConfig, run_filter
from llmctl.errors import UsageError
from llmctl.store.dataset import MANIFEST, Dataset

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

CRAWL = Path("examples/crawl/crawl-00000.warc.gz")  # a real crawl file (../shared/data/crawl)
LLMCTL = [sys.executable, "-m", "llmctl"]


def cfg(**kw) -> FilterConfig:
    return FilterConfig(workers=kw.pop("workers", 1), **kw)


def crawl_copies(tmp_path: Path, n: int) -> list[str]:
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    for i in range(n):
        shutil.copy(CRAWL, d / f"crawl-{i:02d}.warc.gz")
    return [str(d)]


def test_funnel_adds_up_on_a_real_crawl(tmp_path):
    m = run_filter([str(CRAWL)], tmp_path / "out", cfg(), progress=False)
    rows = {r["row"]: r for r in m["stats"]["funnel"]}
    read, kept = rows.pop("read"), rows.pop("kept")
    assert read["docs"] == 102  # response records in the file (tests/fixtures/crawl-00000.manifest.jsonl)
    assert read["docs"] == kept["docs"] + sum(r["docs"] for r in rows.values())
    assert read["bytes"] == kept["bytes"] + sum(r["bytes"] for r in rows.values())
    assert 0 < kept["docs"] < read["docs"]
    assert any(k.startswith("rejected.c4.") for k in rows) and any(k.startswith("rejected.gopher") for k in rows)
    ds = Dataset.open(tmp_path / "out", stage="filter", columns=["text", "id", "pii_email"])
    assert ds.num_rows == kept["docs"]
    # every rejected document is in the dataset OUT.rejected with its reason, and the counts match the funnel
    rej = pq.read_table(tmp_path / "out.rejected" / "part-00000.parquet")
    by_reason = Counter(rej.column("reason").to_pylist())
    for row, r in rows.items():
        if row.startswith("rejected."):
            assert by_reason[row.removeprefix("rejected.")] == r["docs"]
    assert sum(by_reason.values()) == sum(r["docs"] for k, r in rows.items() if k.startswith("rejected."))
    kept_ids = set(ds.read_shard(0).column("id").to_pylist())
    assert not kept_ids & set(rej.column("id").to_pylist())
    assert m["inputs"][0]["fingerprint"].startswith("size")


def test_output_identical_for_any_worker_count(tmp_path):
    inputs = crawl_copies(tmp_path, 3)
    m1 = run_filter(inputs, tmp_path / "w1", cfg(workers=1), progress=False)
    m2 = run_filter(inputs, tmp_path / "w2", cfg(workers=2), progress=False)
    assert m1["fingerprint"] == m2["fingerprint"]
    for s in m1["shards"]:
        assert (tmp_path / "w1" / s["path"]).read_bytes() == (tmp_path / "w2" / s["path"]).read_bytes()
    for s in m1["files"]["rejected"]:
        assert (tmp_path / "w1.rejected" / s["path"]).read_bytes() == (
            tmp_path / "w2.rejected" / s["path"]
        ).read_bytes()


def test_rerun_is_noop_and_config_change_refuses(tmp_path):
    m = run_filter([str(CRAWL)], tmp_path / "out", cfg(), progress=False)
    again = run_filter([str(CRAWL)], tmp_path / "out", cfg(workers=2), progress=False)
    assert again["timings"] == m["timings"]  # already complete: nothing re-run
    other = cfg()
    other.c4.min_words_per_line = 3
    with pytest.raises(UsageError, match="c4.min_words_per_line"):
        run_filter([str(CRAWL)], tmp_path / "out", other, progress=False)
    m3 = run_filter([str(CRAWL)], tmp_path / "out", other, overwrite=True, progress=False)
    assert m3["config"]["c4"]["min_words_per_line"] == 3


def test_killed_run_resumes_to_identical_output(tmp_path):
    # per-shard resume without dedup; with dedup (intermediates under _work) see tests/test_dedup.py
    inputs = crawl_copies(tmp_path, 4)
    clean_cfg = cfg()
    clean_cfg.dedup.exact = clean_cfg.dedup.minhash = clean_cfg.dedup.c4_span = False
    clean = run_filter(inputs, tmp_path / "clean", clean_cfg, progress=False)
    out = tmp_path / "killed"
    cmd = LLMCTL + ["filter", *inputs, "-o", str(out), "--workers", "1", "--no-dedup"]
    resumed, r = kill_and_resume(cmd, out)
    assert resumed["fingerprint"] == clean["fingerprint"]
    assert resumed["stats"]["funnel"] == clean["stats"]["funnel"]
    assert not list(out.rglob(".*.tmp*")) and not (out / "_tasks").exists()
    rej, clean_rej = (json.loads(Path(f"{p}.rejected/{MANIFEST}").read_text()) for p in (out, tmp_path / "clean"))
    assert rej["fingerprint"] == clean_rej["fingerprint"] and rej["num_rows"] > 0  # removed documents resumed too
    assert not list(Path(f"{out}.rejected").glob(".*.tmp*"))


def test_cli_prints_funnel_and_bad_inputs_fail_cleanly(tmp_path):
    good = write_warc_gz(tmp_path / "a.warc.gz", [response_record("https://e.org/1", html_page(GOOD_PARAGRAPHS * 3))])
    r = subprocess.run(
        LLMCTL + ["filter", str(good), "-o", str(tmp_path / "ok"), "--no-gopher"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "kept" in r.stdout and "read" in r.stdout
    assert Dataset.open(tmp_path / "ok").num_rows == 1

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "notext.parquet")
    for bad, msg in [
        ([str(tmp_path / "missing.warc.gz")], "no such file"),
        ([str(tmp_path / "notext.parquet")], "no 'text' column"),
        ([str(tmp_path / "*.nothing")], "no input matches"),
    ]:
        out = tmp_path / "never"
        r = subprocess.run(LLMCTL + ["filter", *bad, "-o", str(out)], capture_output=True, text=True)
        assert r.returncode == 2
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert not out.exists()


def test_parquet_dataset_input_keeps_lineage(tmp_path):
    run_filter([str(CRAWL)], tmp_path / "first", cfg(), progress=False)
    m = run_filter([str(tmp_path / "first")], tmp_path / "second", cfg(), progress=False)
    first = Dataset.open(tmp_path / "first")
    assert m["inputs"] == [first.lineage()]
    # already-filtered text passes the same rules again, ids are kept
    assert m["num_rows"] == first.num_rows
    assert (
        Dataset.open(tmp_path / "second").read_shard(0).column("id").to_pylist()
        == first.read_shard(0).column("id").to_pylist()
    )


def test_cli_parser_errors_are_usage_messages_not_tracebacks(tmp_path):
    for args, msg in [
        (["filter", str(CRAWL), "-o", str(tmp_path / "o"), "--no-such-flag"], "No such option"),
        (["filter", str(CRAWL), "-o", str(tmp_path / "o"), "--workers", "many"], "Invalid value"),
        (["filter"], "Missing argument"),
    ]:
        r = subprocess.run(LLMCTL + args, capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert msg in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
