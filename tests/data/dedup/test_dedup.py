"""Dedup in `llmctl filter`: planted exact and near duplicates removed, shared boilerplate kept,
results independent of workers and input order, rejected rows point at the kept document, and a
re-run over damaged intermediates ends with the output of a clean run."""

from __future__ import annotations

import gzip
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from llmctl.data.dedup import base as D
from llmctl.data.dedup import run as dedup_run
from llmctl.data.filter import FilterConfig, run_filter
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset

HQ = Path("tests/fixtures/quality_hq.jsonl.gz")  # real pages from ../shared/data/crawl (tests/fixtures/README.md)
BOILERPLATE = (
    "This page is part of the archive. All content is provided as is. Please report broken links to the maintainers."
)


def real_pages(n: int) -> list[dict]:
    with gzip.open(HQ, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if len(r["text"].split()) > 300 and r["source"] == "doc:python3.11-doc"][:n]


def edit_words(text: str, k: int, seed: int) -> str:
    words = text.split(" ")
    rng = random.Random(seed)
    for i in rng.sample(range(len(words)), k):
        words[i] = "zzword"
    return " ".join(words)


def cfg(**kw) -> FilterConfig:
    c = FilterConfig(workers=kw.pop("workers", 1), **kw)
    c.c4.enabled = c.gopher_quality.enabled = c.gopher_repetition.enabled = c.pii.enabled = False
    return c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Three JSONL shards of real pages with planted exact and near duplicates and shared boilerplate."""
    d = tmp_path_factory.mktemp("corpus")
    pages = real_pages(12)
    assert len(pages) == 12
    orig = [{"id": f"orig{i}", "text": p["text"]} for i, p in enumerate(pages[:8])]
    boiler = [{"id": f"boiler{i}", "text": p["text"] + "\n" + BOILERPLATE} for i, p in enumerate(pages[8:12])]
    exact = [
        {"id": "exact0", "text": orig[0]["text"].upper().replace("\n", "  \n ")},  # case + whitespace
        {"id": "exact1", "text": orig[5]["text"].replace(", ", " ,  ")},  # punctuation spacing
        {"id": "exact2", "text": orig[5]["text"]},
    ]
    near = [
        {"id": "near0", "text": edit_words(orig[1]["text"], 3, 0)},
        {"id": "near1", "text": edit_words(orig[6]["text"], 2, 1)},
        {"id": "near2", "text": edit_words(orig[6]["text"], 4, 2)},
    ]
    shards = [
        orig[:4] + boiler[:2],
        orig[4:6] + exact[:2] + [near[0]] + boiler[2:],
        orig[6:] + [exact[2], near[1], near[2]],
    ]
    paths = []
    for i, rows in enumerate(shards):
        p = d / f"shard-{i}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(p))
    return {
        "paths": paths,
        "dups": {
            "exact0": "orig0",
            "exact1": "orig5",
            "exact2": "orig5",
            "near0": "orig1",
            "near1": "orig6",
            "near2": "orig6",
        },
    }


def kept_ids(out: Path) -> set[str]:
    return {i for b in Dataset.open(out).iter_batches(["id"]) for i in b.column("id").to_pylist()}


def rejected(out: Path) -> dict[str, tuple[str, str]]:
    rows = [r for f in sorted(Path(f"{out}.rejected").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return {r["id"]: (r["reason"], r["detail"]) for r in rows}


def test_minhash_matches_datasketch():
    from datasketch import MinHash

    sh = D.shingles(D.normalize_text("The quick brown fox, jumps over the lazy dog! Again and again."), 5)
    m = MinHash(num_perm=128, seed=1)
    for s in sh:
        m.update(s)
    assert np.array_equal(D.minhash(sh, 128, 1), m.hashvalues)
    assert D.normalize_text("Hello,  World!\n") == "hello world"
    assert D.lsh_params(0.8, 128, None, None) == (14, 9)


def test_planted_duplicates_removed_boilerplate_kept(corpus, tmp_path):
    m = run_filter(corpus["paths"], tmp_path / "out", cfg(), progress=False)
    kept = kept_ids(tmp_path / "out")
    rej = rejected(tmp_path / "out")
    for dup, orig in corpus["dups"].items():
        assert dup not in kept and orig in kept
        assert rej[dup] == ("dedup.exact" if dup.startswith("exact") else "dedup.minhash", orig)
    # distinct pages sharing boilerplate are kept; the boilerplate span stays only in the first
    assert {f"boiler{i}" for i in range(4)} <= kept
    texts = {r["id"]: r["text"] for b in Dataset.open(tmp_path / "out").iter_batches() for r in b.to_pylist()}
    assert BOILERPLATE in texts["boiler0"]
    assert sum(BOILERPLATE.split(". ")[1] in t for t in texts.values()) == 1
    rows = {r["row"]: r for r in m["stats"]["funnel"]}
    assert rows["rejected.dedup.exact"]["docs"] == 3 and rows["rejected.dedup.minhash"]["docs"] == 3
    assert rows["read"]["docs"] == rows["kept"]["docs"] + 6 == 18
    assert rows["read"]["bytes"] == rows["kept"]["bytes"] + sum(
        r["bytes"] for k, r in rows.items() if k.startswith("rejected.")
    )
    assert m["stats"]["counters"]["dedup.c4_span.docs_edited"] == 3
    assert not (tmp_path / "out" / "_work").exists()


def test_same_result_for_workers_and_input_order(corpus, tmp_path):
    a = run_filter(corpus["paths"], tmp_path / "w1", cfg(workers=1), progress=False)
    b = run_filter(corpus["paths"], tmp_path / "w2", cfg(workers=2), progress=False)
    assert a["fingerprint"] == b["fingerprint"]
    shuffled = [corpus["paths"][i] for i in (2, 0, 1)]
    run_filter(shuffled, tmp_path / "shuf", cfg(workers=2), progress=False)
    assert kept_ids(tmp_path / "shuf") == kept_ids(tmp_path / "w1")
    assert rejected(tmp_path / "shuf") == rejected(tmp_path / "w1")


def test_against_earlier_dataset(corpus, tmp_path):
    first = tmp_path / "first"
    run_filter(corpus["paths"][:1], first, cfg(), progress=False)
    c = cfg()
    c.dedup.scope, c.dedup.against = "self+against", [str(first)]
    run_filter(corpus["paths"][1:], tmp_path / "second", c, progress=False)
    rej = rejected(tmp_path / "second")
    # orig6 (shard 2) duplicates nothing in `first`; near0 duplicates orig1, which is in `first`
    assert rej["near0"] == ("dedup.minhash", "orig1")
    assert "orig6" in kept_ids(tmp_path / "second")
    with pytest.raises(UsageError, match="self\\+against"):
        c2 = cfg()
        c2.dedup.against = [str(first)]
        run_filter(corpus["paths"][1:], tmp_path / "third", c2, progress=False)


def test_rerun_after_crash_and_damaged_intermediates(corpus, tmp_path, monkeypatch):
    clean = run_filter(corpus["paths"], tmp_path / "clean", cfg(), progress=False)
    out = tmp_path / "crashed"

    def crash(*a, **k):
        raise RuntimeError("killed during span dedup")

    monkeypatch.setattr(dedup_run, "span_task", crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_filter(corpus["paths"], out, cfg(), progress=False)
    monkeypatch.undo()
    work = out / "_work"
    assert (work / "clusters" / "_manifest.json").is_file()
    shutil.rmtree(work / "groups")  # an intermediate lost
    (work / "signatures" / "_manifest.json").unlink()  # one half-written (no manifest, no run record)
    (work / "signatures" / "_run.json").unlink(missing_ok=True)
    m = run_filter(corpus["paths"], out, cfg(workers=2), progress=False)
    assert m["fingerprint"] == clean["fingerprint"]
    assert not work.exists()


def test_dedup_switches_and_bad_options(corpus, tmp_path):
    c = cfg()
    c.dedup.minhash = c.dedup.c4_span = False
    run_filter(corpus["paths"], tmp_path / "exact_only", c, progress=False)
    reasons = Counter(r for r, _ in rejected(tmp_path / "exact_only").values())
    assert reasons == {"dedup.exact": 3}
    for field, value, msg in [("threshold", 1.5, "between 0 and 1"), ("bands", 20, "both"), ("scope", "all", "one of")]:
        c = cfg()
        setattr(c.dedup, field, value)
        with pytest.raises(UsageError, match=msg):
            run_filter(corpus["paths"], tmp_path / "bad", c, progress=False)
        assert not (tmp_path / "bad").exists()


def test_real_crawl_planted_pair_removed(tmp_path):
    """crawl-00000 holds one planted near duplicate of a page in the same file."""
    labels = [json.loads(line) for line in open("tests/fixtures/crawl-00000.manifest.jsonl")]
    near = [r for r in labels if r["kind"] == "near_dup" and any(o["record_id"] == r["dup_of"] for o in labels)]
    assert len(near) == 1
    from llmctl.data.extract import make_id

    c = FilterConfig(workers=1)
    run_filter(["examples/crawl/crawl-00000.warc.gz"], tmp_path / "out", c, progress=False)
    rej = rejected(tmp_path / "out")
    dup, orig = make_id(near[0]["record_id"]), make_id(near[0]["dup_of"])
    assert rej[dup][0].startswith("dedup.") and rej[dup][1] == orig
    assert orig in kept_ids(tmp_path / "out")
