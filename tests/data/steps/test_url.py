"""The `url` step: a document whose host is a listed domain or under one is dropped; others are kept."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml
from typer.testing import CliRunner
from warc_utils import GOOD_PARAGRAPHS, html_page, response_record, write_warc_gz

import llmctl.data.extract as extract
from llmctl.cli import app
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


def test_allowlist_wins_url_entries_and_banned_words(tmp_path):
    block = tmp_path / "block.txt"
    block.write_text("example.com\nexample.org/spam\n")
    allow = tmp_path / "allow.txt"
    allow.write_text("news.example.com\nexample.org/spam/ok\n")
    step = UrlFilter(UrlConfig(blocklist=[str(block)], allowlist=[str(allow)], banned_words=["casino"]))

    def verdict(url):
        doc = Document("d", "text", url=url)
        return step(doc, Counter()), doc.meta.get(DETAIL_KEY)

    assert verdict("https://www.example.com/a") == ("url.blocklist", "example.com")
    assert verdict("https://a.news.example.com/casino") == (None, None)  # allow-listed: blocklist and words lose
    assert verdict("https://WWW.example.org/spam/#top") == ("url.blocklist", "example.org/spam")
    assert verdict("http://example.org/spam/ok") == (None, None)
    assert verdict("https://example.org/spammy") == (None, None)
    assert verdict("https://best-casino.example.net/") == ("url.banned_word", "casino")
    assert verdict("https://casinos.example.net/") == (None, None)  # a word, not a substring


def test_an_empty_blocklist_is_a_usage_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing listed yet\n\n")
    with pytest.raises(UsageError, match="has no domains or URLs"):
        UrlFilter(UrlConfig(blocklist=str(empty)))


def test_blocked_pages_are_rejected_before_extraction(tmp_path, monkeypatch):
    hosts = ["https://spam.example.com/a", "https://ok.example.org/b", "https://example.com/c", "https://x.test/d"]
    warc = write_warc_gz(tmp_path / "c.warc.gz", [response_record(u, html_page(GOOD_PARAGRAPHS)) for u in hosts])
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text("example.com\n")
    two.write_text("x.test\n")
    calls = []
    real = extract.html_to_text
    monkeypatch.setattr(extract, "html_to_text", lambda *a: calls.append(1) or real(*a))
    cfg = FilterConfig(steps=["url"], workers=1)
    cfg.url.blocklist = [str(one), str(two)]
    cfg.dedup.exact = cfg.dedup.minhash = cfg.dedup.c4_span = False
    m = run_filter([str(warc)], tmp_path / "out", cfg, progress=False)
    assert len(calls) == 1  # only the page no list blocks was extracted
    funnel = {r["row"]: r["docs"] for r in m["stats"]["funnel"]}
    assert funnel == {"read": 4, "rejected.url.blocklist": 3, "kept": 1}
    stats = json.loads((tmp_path / "out" / "_stats.json").read_text())
    url = stats["steps"][0]
    assert (url["step"], url["docs_in"], url["docs_out"]) == ("url", 4, 1)
    assert [i.get("stage") for i in m["inputs"]].count("url.blocklist") == 2


def test_url_blocklist_flag_is_repeatable():
    args = ["filter", "IN", "-o", "OUT", "--url-blocklist", "a.txt", "--url-blocklist", "b.txt", "--print-config"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(r.output)["url"]["blocklist"] == ["a.txt", "b.txt"]
