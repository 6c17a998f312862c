"""Line-level dedup (Dolma/CCNet): a normalized line in more than `line_max_docs` documents is cut
from all of them but the first, inside the dedup shuffle; worker- and partition-invariant; a
document left too short for Gopher's word count is removed (reason dedup.line)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_dedup import rejected
from test_dedup_shuffle import output_bytes

from llmctl.data.dedup import base as D
from llmctl.data.filter import FilterConfig, run_filter

STORIES = Path(__file__).parents[2] / "fixtures" / "tinystories_valid_head_300k.txt"
MENU = "Home | About us | Subscribe to our newsletter for weekly stories"  # in 4 documents
SHARED = "Read more stories like this one in our library."  # in 2 documents: not boilerplate at N = 2


def paragraphs(n: int) -> list[str]:
    paras = [p.strip() for p in STORIES.read_text(encoding="utf-8").split("\n\n")]
    return [p for p in paras if len(p.split()) > 60 and "\n" not in p][:n]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("lines")
    p = paragraphs(8)
    short = " ".join(p[7].split()[:40])  # 40 words + the menu's 10 = 50: passes Gopher's 50, not once cut
    rows = [
        [
            {"id": "a", "text": f"{MENU}\n{p[0]}\n{SHARED}"},
            {"id": "b", "text": f"{p[1]}\n{MENU}"},
            {"id": "c", "text": f"{MENU}\n{p[2]}\n{MENU}"},
        ],
        [
            {"id": "d", "text": f"{p[3]}\n{SHARED}"},
            {"id": "e", "text": f"{p[4]}\n\n{MENU.upper()}!"},
            {"id": "f", "text": p[5]},
            {"id": "short", "text": f"{short}\n{MENU.lower()}"},
        ],
    ]
    paths = []
    for i, r in enumerate(rows):
        f = d / f"s{i}.jsonl"
        f.write_text("".join(json.dumps(x) + "\n" for x in r))
        paths.append(str(f))
    return paths


def run(paths, out, workers=1, parts=None, keep_first=True) -> dict:
    c = FilterConfig(workers=workers)
    c.c4.enabled = c.gopher_repetition.enabled = c.pii.enabled = c.langid.enabled = False
    c.gopher_quality.enabled = True  # its word count is the length rule a cut document is checked with again
    c.dedup.exact = c.dedup.minhash = c.dedup.c4_span = False
    c.dedup.line, c.dedup.line_max_docs, c.dedup.partitions = True, 2, parts
    c.dedup.line_keep_first = keep_first
    return run_filter(paths, out, c, progress=False)


def texts(out: Path) -> dict[str, str]:
    return {r["id"]: r["text"] for f in sorted(out.glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()}


def test_boilerplate_line_cut_from_all_but_first(shards, tmp_path):
    m = run(shards, tmp_path / "out")
    t = texts(tmp_path / "out")
    assert t["a"].startswith(MENU)  # the first document keeps it
    for i in "bce":
        assert MENU.lower() not in t[i].lower(), i  # normalized: case and punctuation do not matter
    assert t["c"].count("\n") == 0 and t["b"] and t["e"]
    assert SHARED in t["a"] and SHARED in t["d"]  # in 2 documents, not more than line_max_docs
    assert t["f"] == paragraphs(8)[5]
    assert rejected(tmp_path / "out") == {"short": ("dedup.line", "a")}  # 40 words left < Gopher's 50
    c = m["stats"]["counters"]
    assert c["dedup.line.docs_edited"] == 3 and c["dedup.line.lines_cut"] == 4  # c had it twice
    rows = {r["row"]: r for r in m["stats"]["funnel"]}
    assert rows["rejected.dedup.line"]["docs"] == 1
    assert rows["read"]["docs"] == rows["kept"]["docs"] + 1
    assert rows["read"]["bytes"] == sum(r["bytes"] for k, r in rows.items() if k != "read")
    assert m["stats"]["dedup"]["lines"]["boilerplate_lines"] == 1


def test_line_dedup_output_identical_for_workers_and_partitions(shards, tmp_path):
    run(shards, tmp_path / "one", workers=1, parts=1)
    run(shards, tmp_path / "two", workers=2, parts=5)
    assert output_bytes(tmp_path / "one") == output_bytes(tmp_path / "two")


def test_line_hashes_normalize():
    assert [h for _, h in D.line_hashes("Home | About\n\n---\nhome about!")] == [D.line_hashes("home about")[0][1]] * 2
    assert D.drop_lines("a\nb\nc", {1}) == "a\nc"


def test_drop_lines_keeps_the_trailing_newline_and_blank_lines():
    assert D.drop_lines("a\nb\nc\n", {1}) == "a\nc\n"
    assert D.drop_lines("menu\nbody\n", {0}) == "body\n"
    assert D.drop_lines("a\n\nb\nmenu\n", {3}) == "a\n\nb\n"
    assert D.drop_lines("no newline\nmenu", {1}) == "no newline"


def test_every_copy_cut_when_keep_first_is_off(shards, tmp_path):
    m = run(shards, tmp_path / "out", keep_first=False)
    t = texts(tmp_path / "out")
    for i in "abce":
        assert MENU.lower() not in t[i].lower(), i  # the first document loses it too
    assert t["a"] == f"{paragraphs(8)[0]}\n{SHARED}"
    assert rejected(tmp_path / "out")["short"][0] == "dedup.line"
    c = m["stats"]["counters"]
    assert c["dedup.line.docs_edited"] == 4 and c["dedup.line.lines_cut"] == 5
