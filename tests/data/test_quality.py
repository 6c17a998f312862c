"""The fastText quality classifier: trained on real text with a held-out F1 floor, clear errors,
and the `quality` step of `llmctl filter` (threshold and seeded Pareto sampling)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from llmctl.data.filter import FilterConfig, run_filter
from llmctl.data.quality import QualityTrainConfig, train_quality
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

DATA = Path("tests/fixtures")  # quality_{hq,lq}.jsonl.gz: real crawl pages, see tests/fixtures/README.md
LLMCTL = [sys.executable, "-m", "llmctl"]
# Held-out F1 floor. Predicting "hq" for every page gives F1 = 2p/(1+p) with p = 60/111 hq
# held-out pages, 0.70; the model measured 0.918 (precision 0.90, recall 0.93) with the default
# config and seed. 0.85 is well above the trivial classifier and leaves room for fastText
# version differences.
F1_FLOOR = 0.85


def plain(**kw) -> FilterConfig:
    c = FilterConfig(workers=kw.pop("workers", 1))
    c.c4.enabled = c.gopher_quality.enabled = c.gopher_repetition.enabled = c.pii.enabled = False
    c.langid.enabled = False  # the pages are in 25 languages (debian-handbook); langid has its own tests
    c.dedup.exact = c.dedup.minhash = c.dedup.c4_span = False
    for k, v in kw.items():
        setattr(c.quality, k, v)
    return c


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("quality")
    for side in ("hq", "lq"):
        run_filter([str(DATA / f"quality_{side}.jsonl.gz")], d / side, plain(), progress=False)
    r = subprocess.run(
        LLMCTL + ["quality", "train", "-p", str(d / "hq"), "-n", str(d / "lq"), "-o", str(d / "model")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return {"dir": d, "stdout": r.stdout, "manifest": json.loads((d / "model" / "_manifest.json").read_text())}


def test_trained_on_real_text_beats_floor(model):
    h = model["manifest"]["stats"]["heldout"]
    assert h["f1"] >= F1_FLOOR, h
    assert f"F1 {h['f1']:.3f}" in model["stdout"]
    assert model["manifest"]["stats"]["heldout_docs"]["hq"] >= 50
    assert model["manifest"]["inputs"]["positive"][0]["stage"] == "filter"


def test_training_is_reproducible(model, tmp_path):
    d = model["dir"]
    m = train_quality([str(d / "hq")], [str(d / "lq")], tmp_path / "again", QualityTrainConfig())
    assert m["stats"]["heldout"] == model["manifest"]["stats"]["heldout"]
    assert m["model"]["sha256"] == model["manifest"]["model"]["sha256"]


def test_training_in_a_long_lived_process_gives_the_same_model(model, tmp_path):
    """fastText leaves 9/10 of its input matrix uninitialised with one thread; freed heap memory there
    made in-process training diverge or differ (seen in the suite and in `llmctl run`)."""
    big = np.empty(3_000_000)  # a 24 MB mmapped block freed: glibc raises its mmap threshold to 24 MB,
    del big  # so fastText's ~15 MB matrix will come from the heap ...
    junk = [np.full(125_000, np.nan) for _ in range(30)]  # ... which now holds NaNs
    del junk
    d = model["dir"]
    m = train_quality([str(d / "hq")], [str(d / "lq")], tmp_path / "again", QualityTrainConfig())
    assert m["model"]["sha256"] == model["manifest"]["model"]["sha256"]


def test_filter_scores_and_keeps_by_threshold_and_pareto(model, tmp_path):
    d = model["dir"]
    mdir = str(d / "model")
    inp = [str(d / "hq"), str(d / "lq")]
    m = run_filter(inp, tmp_path / "thr", plain(model=mdir, threshold=0.5), progress=False)
    kept = (
        Dataset.open(tmp_path / "thr").read_shard(0).to_pylist()
        + Dataset.open(tmp_path / "thr").read_shard(1).to_pylist()
    )
    assert kept and all(r["quality_score"] >= 0.5 for r in kept)
    rej = pq.read_table(tmp_path / "thr.rejected" / "part-00001.parquet").to_pylist()
    assert rej and all(r["reason"] == "quality.low_score" and r["quality_score"] < 0.5 for r in rej)
    hq_kept = Dataset.open(tmp_path / "thr").shards[0]
    assert pq.read_metadata(hq_kept).num_rows > 0.8 * Dataset.open(d / "hq").num_rows
    assert m["stats"]["funnel"][-1]["docs"] == len(kept)

    a = run_filter(inp, tmp_path / "p1", plain(model=mdir, sampling="pareto", alpha=9.0, seed=3), progress=False)
    b = run_filter(
        inp, tmp_path / "p2", plain(model=mdir, sampling="pareto", alpha=9.0, seed=3, workers=2), progress=False
    )
    assert a["fingerprint"] == b["fingerprint"]
    # GPT-3 rule: keep when Pareto(alpha) > 1 - score, drawn per (seed, id)
    from llmctl.data.quality import QualityConfig, QualityFilter

    qf = QualityFilter(QualityConfig(model=mdir, sampling="pareto", alpha=9.0, seed=3))
    ids = {r["id"] for s in Dataset.open(tmp_path / "p1").shards for r in pq.read_table(s, columns=["id"]).to_pylist()}
    rows = [r for s in Dataset.open(tmp_path / "thr").shards for r in pq.read_table(s).to_pylist()]
    for r in rows[:50]:
        assert (r["id"] in ids) == qf.keep(r["id"], r["quality_score"])
    # the keep rate follows (2 - s)^-alpha
    s = np.array([0.0, 0.5, 0.9])
    draws = np.random.default_rng(0).pareto(9.0, size=200_000)
    assert np.allclose([(draws > 1 - x).mean() for x in s], (2 - s) ** -9.0, atol=0.01)


def test_bad_model_and_nan_give_one_line_errors(model, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.bin").write_bytes(b"this is not a fastText model")
    r = subprocess.run(
        LLMCTL + ["filter", str(DATA / "quality_hq.jsonl.gz"), "-o", str(tmp_path / "o"), "--quality-model", str(bad)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "not a fastText model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()

    for side, word in (("p", "a"), ("n", "b")):
        tiny = tmp_path / f"{side}.jsonl"
        tiny.write_text("".join(json.dumps({"text": f"{word} a a a {i}"}) + "\n" for i in range(6)))
        run_filter([str(tiny)], tmp_path / side, plain(), progress=False)
    with pytest.raises(UsageError, match="diverged"):
        train_quality(
            [str(tmp_path / "p")],
            [str(tmp_path / "n")],
            tmp_path / "m",
            QualityTrainConfig(lr=10.0, epoch=50, dim=8, bucket=1000),
        )


def test_model_on_a_uri_scores_like_the_local_one(model, tmp_path):
    """A model on a URI (s3:// on a cluster; file:// here, read through fsspec) is copied to a
    local cache by content and gives the same scores and the same output shards."""
    d = model["dir"]
    inp = [str(d / "hq")]
    local = run_filter(inp, tmp_path / "local", plain(model=str(d / "model")), progress=False)
    remote = run_filter(inp, tmp_path / "uri", plain(model=f"file://{d}/model"), progress=False)
    assert remote["shards"] == local["shards"] and local["num_rows"] > 0
    assert remote["inputs"][-1] == {**local["inputs"][-1], "path": f"file://{d}/model/model.bin"}
