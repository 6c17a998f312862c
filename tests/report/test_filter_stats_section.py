"""`llmctl report` shows a filter output's per-step statistics (_stats.json) with the file's numbers."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

from llmctl.data.filter import FilterConfig, run_filter
from llmctl.report.build import build_report

FIXTURE = Path(__file__).parents[1] / "fixtures" / "quality_lq.jsonl.gz"


class Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, each with the <h2> heading before it."""

    def __init__(self):
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.heading = ""
        self._in: str | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append((self.heading, []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th", "h2"):
            self._in, self._text = tag, ""

    def handle_endtag(self, tag):
        if tag == "h2" and self._in == "h2":
            self.heading = self._text
        elif tag in ("td", "th") and self._in == tag:
            self.tables[-1][1][-1].append(self._text)
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in:
            self._text += data


def test_report_shows_the_stats_file_numbers(tmp_path):
    root = tmp_path / "run"
    cfg = FilterConfig(workers=1)
    cfg.dedup.minhash = False
    run_filter([str(FIXTURE)], root / "docs", cfg, progress=False)
    stats = json.loads((root / "docs" / "_stats.json").read_text())
    page = build_report(root).read_text()
    parser = Tables()
    parser.feed(page)
    mine = [rows for heading, rows in parser.tables if heading == "Filter steps (docs)"]
    assert len(mine) == 2, [h for h, _ in parser.tables]
    steps, reasons = mine

    def num(s: str) -> int:
        return int(s.replace(",", ""))

    assert steps[0] == ["step", "docs in", "docs out", "removed", "seconds"]
    shown = [[r[0], num(r[1]), num(r[2]), num(r[3]), r[4]] for r in steps[1:]]
    assert shown == [
        [s["step"], s["docs_in"], s["docs_out"], s["docs_in"] - s["docs_out"], f"{s['seconds']:.3f}"]
        for s in stats["steps"]
    ]
    assert [s[0] for s in shown] == ["extract", "langid", "gopher_repetition", "gopher_quality", "c4", "pii", "dedup"]
    want = sorted(
        (s["step"], reason, r["docs"], r["bytes"]) for s in stats["steps"] for reason, r in s["reasons"].items()
    )
    assert sorted((r[0], r[1], num(r[2]), num(r[3])) for r in reasons[1:]) == want
    assert len(want) >= 3 and any(s["docs_in"] != s["docs_out"] for s in stats["steps"])


def test_no_stats_file_no_section(tmp_path):
    root = tmp_path / "run"
    cfg = FilterConfig(workers=1)
    cfg.dedup.exact = cfg.dedup.minhash = cfg.dedup.c4_span = False
    run_filter([str(FIXTURE)], root / "docs", cfg, progress=False)
    (root / "docs" / "_stats.json").unlink()
    assert "Filter steps" not in build_report(root).read_text()
