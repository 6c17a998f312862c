"""The `url` step: a document whose host is a listed domain or under one is dropped; others are kept."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from llmctl.data.document import DETAIL_KEY, Document
from llmctl.data.filter import FilterConfig, run_filter
from llmctl.data.steps.url import UrlConfig, UrlFilter
from llmctl.errors import UsageError


@pytest.fixture
def blocklist(tmp_path):
    p = tmp_path / "blocked.txt"
    p.write_text("# spam farms\nExample.com\n*.ads.test.  # and every subdomain\n\n")
    return str(p)


def test_subdomain_of_a_listed_domain_is_dropped_and_a_lookalike_kept(blocklist):
    step = UrlFilter(UrlConfig(blocklist=blocklist))
    doc = Document("1", "text", url="https://News.Example.com:8080/a?b=c")
    assert step(doc, Counter()) == "url.blocklist" and doc.meta[DETAIL_KEY] == "example.com"
    for url in ("https://notexample.com/", "https://example.com.org/", "not a url", None):
        assert step(Document("2", "text", url=url), Counter()) is None, url
    assert step.blocked_by("http://x.ads.test/") == "ads.test"


def test_off_by_default_and_a_missing_blocklist_is_a_usage_error(tmp_path):
    assert not FilterConfig().url.enabled
    with pytest.raises(UsageError, match="url.blocklist"):
        UrlFilter(UrlConfig(blocklist=str(tmp_path / "missing.txt")))


def test_filter_drops_by_url_with_its_reason(tmp_path, blocklist):
    src = tmp_path / "docs.jsonl"
    rows = [
        {"id": "kept", "text": "A page we keep.", "url": "https://example.org/page"},
        {"id": "dropped", "text": "A page we drop.", "url": "https://www.example.com/page"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = FilterConfig(steps=["url"], workers=1)
    cfg.url.blocklist = blocklist
    cfg.dedup.exact = cfg.dedup.minhash = cfg.dedup.c4_span = False
    m = run_filter([str(src)], tmp_path / "out", cfg, progress=False)
    funnel = {r["row"]: r["docs"] for r in m["stats"]["funnel"]}
    assert funnel == {"read": 2, "rejected.url.blocklist": 1, "kept": 1}
    assert any(i.get("stage") == "url.blocklist" for i in m["inputs"])  # the list's content is an input
