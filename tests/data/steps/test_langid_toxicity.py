"""The langid step (lid.176) and the toxicity step (alt-profanity-check's model) inside `llmctl filter`:
each keeps a case it must keep and drops one it must drop; scores land in their columns."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llmctl.data.filter import FilterConfig, run_filter
from llmctl.errors import UsageError

DATA = Path(__file__).parents[2] / "fixtures"
PAGES = DATA / "charset_pages.warc.gz"  # real crawl pages: English news and docs, a German sports page
STORY = (
    "Once upon a time, there was a little girl named Lily who loved to play in the garden with her dog. "
    "Every morning she would walk to the old oak tree and look for the birds that lived in its branches. "
    "One day she found a small bird that could not fly, and she carried it home in her hands very gently."
)
# A human turn of HH-RLHF's harmless-base test split (../shared/data/prefs, tests/fixtures/hh_rlhf_harmless_base_test_head40.jsonl)
INSULT = "Fyck of you fuck"


def cfg(**kw) -> FilterConfig:
    c = FilterConfig(workers=1, **kw)
    c.c4.enabled = c.gopher_quality.enabled = c.gopher_repetition.enabled = c.pii.enabled = False
    c.dedup.exact = c.dedup.minhash = c.dedup.c4_span = False
    return c


def rows(out: Path, rejected: bool = False) -> dict[str, dict]:
    d = Path(f"{out}.rejected") if rejected else out
    return {
        r["url"] or r["text"][:20]: r for f in sorted(d.glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()
    }


def test_langid_keeps_english_drops_german(tmp_path):
    m = run_filter([str(PAGES)], tmp_path / "out", cfg(), progress=False)
    kept, rej = rows(tmp_path / "out"), rows(tmp_path / "out", rejected=True)
    bbc = kept["https://www.bbc.com/news/world-us-canada-52241221"]
    assert bbc["language"] == "en" and bbc["language_score"] > 0.9
    de = rej["http://06.live-radsport.ch/tippspiel/stats_140_petzi.html"]
    assert de["reason"] == "langid" and de["language"] == "de" and de["detail"].startswith("de ")
    assert all(r["language"] == "en" and r["language_score"] >= 0.65 for r in kept.values())
    funnel = {r["row"]: r["docs"] for r in m["stats"]["funnel"]}
    assert funnel["rejected.langid"] == 1 and funnel["read"] == funnel["kept"] + 1
    assert m["stats"]["counters"]["extract.encoding.bom"] == 2


def test_langid_other_languages_and_annotate_only(tmp_path):
    c = cfg()
    c.langid.languages = ["de"]
    run_filter([str(PAGES)], tmp_path / "de", c, progress=False)
    assert list(rows(tmp_path / "de")) == ["http://06.live-radsport.ch/tippspiel/stats_140_petzi.html"]
    c.langid.languages = []  # keep all, fill the columns
    m = run_filter([str(PAGES)], tmp_path / "all", c, progress=False)
    assert m["stats"]["documents_kept"] == m["stats"]["documents_read"] == 7
    assert {r["language"] for r in rows(tmp_path / "all").values()} == {"en", "de"}


def test_toxicity_keeps_story_drops_insult(tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in (("story", STORY), ("insult", INSULT))))
    c = cfg()
    c.langid.enabled = False
    c.toxicity.enabled = True
    m = run_filter([str(src)], tmp_path / "out", c, progress=False)
    kept, rej = rows(tmp_path / "out"), rows(tmp_path / "out", rejected=True)
    (story,), (insult,) = kept.values(), rej.values()
    assert story["id"] == "story" and story["toxicity_score"] < 0.2
    assert insult["reason"] == "toxicity" and insult["toxicity_score"] > 0.99
    assert m["stats"]["counters"]["toxicity.scored"] == 2


def test_bad_thresholds_are_one_line_errors(tmp_path):
    c = cfg()
    c.langid.threshold = 1.5
    with pytest.raises(UsageError, match="langid-threshold"):
        run_filter([str(PAGES)], tmp_path / "x", c, progress=False)
    assert not (tmp_path / "x").exists()


def test_toxicity_fast_path_equals_scikit_learn():
    """The step evaluates the calibrated SVM as one sparse product: the same numbers as predict_proba,
    on the hand-labelled sample of benchmarks/toxicity_sample.py (real HH-RLHF turns, stories, pages)."""
    import numpy as np

    from llmctl.data.steps.toxicity import toxicity_scores

    sample = Path(__file__).parents[3] / "benchmarks" / "data" / "toxicity_sample.jsonl"
    texts = [json.loads(line)["text"] for line in sample.open(encoding="utf-8")]
    fast, slow = toxicity_scores(texts), toxicity_scores(texts, exact_sklearn=True)
    assert np.allclose(fast, slow, atol=1e-6) and (fast >= 0.8).sum() == 27
