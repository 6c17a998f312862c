"""Build small WARC files in tests: each record its own gzip member, as Common Crawl does."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path


def response_record(
    uri: str,
    body: bytes | str,
    status: int = 200,
    content_type: str = "text/html; charset=utf-8",
    record_id: str | None = None,
    declared_length: int | None = None,
) -> bytes:
    if isinstance(body, str):
        body = body.encode("utf-8")
    http = (
        f"HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    rid = record_id or f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, uri)}>"
    length = len(http) if declared_length is None else declared_length
    head = (
        "WARC/1.0\r\nWARC-Type: response\r\n"
        f"WARC-Record-ID: {rid}\r\nWARC-Date: 2024-05-23T10:08:55Z\r\nWARC-Target-URI: {uri}\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    return head + http + b"\r\n\r\n"


def html_page(paragraphs: list[str], title: str = "A page") -> str:
    body = "".join(f"<p>{p}</p>\n" for p in paragraphs)
    return f"<html><head><title>{title}</title></head><body><article>{body}</article></body></html>"


def write_warc_gz(path: str | Path, records: list[bytes]) -> Path:
    path = Path(path)
    with open(path, "wb") as f:
        for rec in records:
            f.write(gzip.compress(rec, mtime=0))
    return path


GOOD_PARAGRAPHS = [
    # Sentences in the style of TinyStories (../shared/data/tinystories), written as a clean page.
    "Once upon a time, there was a little girl named Lily who loved to play in the garden with her dog.",
    "Every morning she would walk to the old oak tree and look for the birds that lived in its branches.",
    "One day she found a small bird that could not fly, and she carried it home in her hands very gently.",
    "Her mother helped her make a warm bed for the bird out of a box and some soft pieces of cloth.",
    "After a few days the bird was strong again, and Lily opened the window so that it could fly away.",
    "The bird sang a happy song from the tree, and Lily smiled because she knew that it was her friend.",
]
