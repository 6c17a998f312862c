"""llmctl.api: each step of `llmctl filter` from Python, on real text, answering as the stage does."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from llmctl import api
from llmctl.data.filter import FilterConfig, run_filter
from llmctl.data.quality import QualityTrainConfig, train_quality
from llmctl.errors import UsageError

DATA = Path(__file__).parent / "fixtures"
STORIES = [
    p.strip()
    for p in (DATA / "tinystories_valid_head_300k.txt").read_text(encoding="utf-8").split("\n\n")
    if len(p.split()) > 60 and "\n" not in p.strip()
]


def bbc_body() -> bytes:
    """The first record of tests/fixtures/charset_pages.warc.gz: a BBC page, UTF-8 declared in <meta> only."""
    member = gzip.GzipFile(DATA / "charset_pages.warc.gz").read()
    rec = next(iter(ArchiveIterator(io.BytesIO(member), record_types=WarcRecordType.response, parse_http=True)))
    assert rec.http_charset is None
    return rec.reader.read()


def test_extract_text_reads_the_pages_own_charset():
    text = api.extract_text(bbc_body(), url="https://www.bbc.com/news/world-us-canada-52241221")
    assert "de Blasio\xa0indicated" in text and "Â" not in text
    assert (
        api.extract_text(b"<html><body><article><p>caf\xc3\xa9 au lait</p></article></body></html>", charset="utf-8")
        == "café au lait"
    )
    with pytest.raises(ValueError, match="binary_payload"):
        api.extract_text(b"\x00\x01\x02<html>")


def test_scrub_pii_and_bare_phones():
    assert api.scrub_pii("mail me at jo@example.org or 555-123-4567") == (
        "mail me at <EMAIL> or <PHONE>",
        {"email": 1, "ip": 0, "phone": 1},
    )
    assert api.scrub_pii("call 2125551234 today")[0] == "call 2125551234 today"  # off by default
    assert api.scrub_pii("call 2125551234 today", bare_phones=True) == (
        "call <PHONE> today",
        {"email": 0, "ip": 0, "phone": 1},
    )
    assert api.scrub_pii("ISBN 9780306406157", bare_phones=True)[1]["phone"] == 0  # 13 digits: not a phone
    with pytest.raises(UsageError, match="unknown option 'bare_phone'"):
        api.scrub_pii("x", bare_phone=True)


def test_c4_and_gopher_rules():
    story = STORIES[0]
    assert api.c4_filter(story) == (story, None)
    assert api.c4_filter(story + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.") == (
        None,
        "c4.lorem_ipsum",
    )
    assert api.c4_filter("A line without its end\n" + story)[0] == story  # the line rule cuts, keeps the rest
    assert api.gopher_reasons(story + " " + STORIES[1]) == []
    # a 6-word text: its top 2-gram covers most of it, and it has under 50 words (both rule sets, in stage order)
    assert api.gopher_reasons("Too short to be a page.") == ["gopher_rep.top_2gram", "gopher.word_count"]
    assert api.gopher_reasons(STORIES[0], quality={"min_doc_words": 500}) == ["gopher.word_count"]


def test_language():
    assert api.language(STORIES[0])[0] == "en" and api.language(STORIES[0])[1] > 0.9
    assert api.language(STORIES[0].upper()) == pytest.approx(api.language(STORIES[0].lower()))  # capitals lowercased
    lang, score = api.language("Der Hund läuft schnell über die Straße und bellt den Briefträger laut an.")
    assert lang == "de" and score > 0.8


def test_dedup_exact_minhash_line():
    a, b = STORIES[2], STORIES[3]
    near = b.replace("the", "a", 1)
    texts = [a, a.upper() + "!!", b, near, STORIES[4]]
    assert api.dedup(texts, exact=True, minhash=False) == [0, 2, 3, 4]  # normalized copies are one text
    assert api.dedup(texts) == [0, 2, 4]  # and the near copy goes with MinHash
    assert api.dedup(texts, minhash=True, exact=False, threshold=0.99) == [0, 2, 3, 4]  # a higher bar
    assert api.dedup(texts, exact=False, minhash=False) == [0, 1, 2, 3, 4]
    menu = "Home | Contact | Subscribe to our newsletter"
    pages = [f"{menu}\n{s}" for s in STORIES[5:9]]
    kept = api.dedup(pages, exact=False, minhash=False, line=True, line_max_docs=2, return_texts=True)
    assert [i for i, _ in kept] == [0, 1, 2, 3]
    assert kept[0][1] == pages[0] and [t for _, t in kept[1:]] == STORIES[6:9]


def test_custom_label_classifier_from_txt_and_jsonl(tmp_path):
    """`quality train --label story` on a .txt of stories against crawl pages in JSONL, then applied
    in the filter with keep=below: a classifier of what to remove."""
    txt = tmp_path / "stories.txt"
    txt.write_text("\n".join(STORIES[:100]) + "\n")
    m = train_quality(
        [str(txt)], [str(DATA / "quality_lq.jsonl.gz")], tmp_path / "story", QualityTrainConfig(label="story")
    )
    assert m["stats"]["label"] == "__label__story" and set(m["stats"]["train_docs"]) == {"story", "not_story"}
    assert m["stats"]["heldout"]["f1"] >= 0.9, m["stats"]["heldout"]
    held_story = STORIES[-1]  # not among the 100 trained on
    page = json.loads(gzip.open(DATA / "quality_hq.jsonl.gz").readline())["text"]
    s = api.quality_score([held_story, page], tmp_path / "story")
    assert s[0] > 0.5 > s[1]
    src = tmp_path / "mix.jsonl"
    src.write_text(
        json.dumps({"id": "story", "text": held_story}) + "\n" + json.dumps({"id": "page", "text": page}) + "\n"
    )
    c = FilterConfig(steps=["quality"], workers=1)
    c.dedup.exact = c.dedup.minhash = c.dedup.c4_span = False
    c.quality.model, c.quality.keep = str(tmp_path / "story"), "below"
    out = run_filter([str(src)], tmp_path / "out", c, progress=False)
    funnel = {r["row"]: r["docs"] for r in out["stats"]["funnel"]}
    assert funnel["rejected.quality.high_score"] == 1 and funnel["kept"] == 1
    assert np.isclose(api.quality_score([held_story], tmp_path / "story")[0], s[0])


def test_readme_python_example_runs():
    """README.md's llmctl.api block, run as written (its asserts are its claims)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("```python\nfrom llmctl import api\n", 1)[1].split("```", 1)[0]
    exec("from llmctl import api\n" + block, {})
