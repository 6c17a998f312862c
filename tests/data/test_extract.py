"""Readers: every record accounted for; bad records counted and skipped, the rest still read."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
from warc_utils import GOOD_PARAGRAPHS, html_page, response_record, write_warc_gz

from llmctl.data.document import Document
from llmctl.data.extract import ExtractConfig, Rejected, Unreadable, iter_gzip_members, read_input


def tally(path, cfg=None) -> Counter:
    c: Counter = Counter()
    for rec in read_input(path, str(path), cfg or ExtractConfig()):
        if isinstance(rec, Document):
            c["doc"] += 1
        elif isinstance(rec, Unreadable):
            c[rec.reason] += 1
        else:
            assert isinstance(rec, Rejected)
            c[rec.reason] += 1
    return c


def pages(n: int) -> list[bytes]:
    return [response_record(f"https://example.org/{i}", html_page(GOOD_PARAGRAPHS, f"page {i}")) for i in range(n)]


def test_warc_html_extracted_with_metadata(tmp_path):
    p = write_warc_gz(tmp_path / "a.warc.gz", pages(2))
    docs = [r for r in read_input(p, "a.warc.gz", ExtractConfig()) if isinstance(r, Document)]
    assert len(docs) == 2
    assert docs[0].url == "https://example.org/0" and docs[0].date == "2024-05-23T10:08:55Z"
    assert "Lily who loved to play" in docs[0].text and "<p>" not in docs[0].text
    assert docs[0].id != docs[1].id and len(docs[0].id) == 32


def test_status_non_html_binary_and_too_large(tmp_path):
    recs = pages(1) + [
        response_record("https://example.org/moved", "", status=301),
        response_record(
            "https://example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), content_type="image/png"
        ),
        response_record("https://example.org/bin", b"\x00\x01\x02" * 100, content_type="text/html"),
        response_record("https://example.org/huge", "<p>" + "word " * 5000 + "</p>"),
    ]
    p = write_warc_gz(tmp_path / "b.warc.gz", recs)
    c = tally(p, ExtractConfig(max_payload_bytes=10_000))
    assert c == Counter({"doc": 1, "extract.http_status": 1, "non_html": 1, "binary_payload": 1, "too_large": 1})


def test_corrupt_gzip_member_is_skipped_and_the_rest_read(tmp_path):
    members = [gzip.compress(r, mtime=0) for r in pages(5)]
    bad = bytearray(members[2])
    bad[20:60] = b"\xff" * 40  # garbage inside the deflate stream of the third record
    (tmp_path / "c.warc.gz").write_bytes(b"".join(members[:2]) + bytes(bad) + b"".join(members[3:]))
    assert tally(tmp_path / "c.warc.gz") == Counter({"doc": 4, "corrupt_gzip": 1})


def test_truncated_file_counts_the_last_record(tmp_path):
    p = write_warc_gz(tmp_path / "d.warc.gz", pages(3))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 200])
    assert tally(p) == Counter({"doc": 2, "truncated_record": 1})


def test_record_shorter_than_its_content_length(tmp_path):
    rec = response_record("https://example.org/t", html_page(GOOD_PARAGRAPHS), declared_length=100_000)
    p = write_warc_gz(tmp_path / "e.warc.gz", pages(1) + [rec])
    assert tally(p) == Counter({"doc": 1, "truncated_record": 1})


def test_gzip_members_resync_after_garbage(tmp_path):
    members = [gzip.compress(b"x" * 10, mtime=0), b"not gzip at all", gzip.compress(b"y" * 10, mtime=0)]
    (tmp_path / "g.gz").write_bytes(b"".join(members))
    got = [(d, e) for d, e, _ in iter_gzip_members(tmp_path / "g.gz", 1000)]
    assert got == [(b"x" * 10, None), (None, "corrupt_gzip"), (b"y" * 10, None)]


def test_jsonl_bad_lines(tmp_path):
    p = tmp_path / "f.jsonl"
    lines = [
        json.dumps({"text": "a fine document", "id": "doc-1", "url": "https://x.org"}).encode(),
        b'{"text": "broken json',
        b'{"text": "bad \xff\xfe bytes"}',
        json.dumps({"body": "no text field"}).encode(),
        json.dumps({"text": "x" * 5000}).encode(),
        json.dumps({"text": ""}).encode(),
        json.dumps({"text": "another fine one"}).encode(),
    ]
    p.write_bytes(b"\n".join(lines) + b"\n")
    c = tally(p, ExtractConfig(max_text_chars=1000))
    assert c == Counter(
        {"doc": 2, "malformed_json": 1, "invalid_utf8": 1, "no_text_field": 1, "too_large": 1, "extract.empty": 1}
    )
    docs = [r for r in read_input(p, "f.jsonl", ExtractConfig()) if isinstance(r, Document)]
    assert docs[0].id == "doc-1" and docs[0].url == "https://x.org"


def test_jsonl_gz_and_parquet(tmp_path):
    with gzip.open(tmp_path / "h.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    assert tally(tmp_path / "h.jsonl.gz") == Counter({"doc": 2})
    pq.write_table(pa.table({"text": ["a", "b", None], "url": ["u1", None, "u3"]}), tmp_path / "i.parquet")
    assert tally(tmp_path / "i.parquet") == Counter({"doc": 2, "no_text_field": 1})


def test_real_crawl_file_accounting():
    # examples/crawl/crawl-00000.warc.gz: the first file of ../shared/data/crawl (real archived responses)
    c = tally("examples/crawl/crawl-00000.warc.gz")
    manifest = [json.loads(line) for line in open("tests/fixtures/crawl-00000.manifest.jsonl")]
    assert sum(c.values()) == len(manifest)  # one outcome per response record
    assert c["doc"] > 0.8 * len(manifest)
