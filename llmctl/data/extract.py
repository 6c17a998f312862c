"""Readers: WARC (HTML responses), WET, JSONL(.gz) and Parquet into `Document`s.

Every record a reader meets is accounted for. It yields either a `Document` or an
`Unreadable(reason)`: a truncated WARC record, a corrupt gzip member, invalid UTF-8, a binary
or non-HTML payload, a document over the size limit. The run goes on after each.

Gzipped WARC files are read one gzip member at a time (the WARC standard and Common Crawl
compress each record as its own member) with zlib, and each member is parsed by fastwarc.
That is what lets a corrupt member be skipped: the reader resynchronises on the next gzip
header, where fastwarc's own gzip stream stops the whole file at the first bad byte. HTML is
decoded in the page's own charset (HTTP header, BOM, <meta>, else resiliparse's detection: see
llmctl.data.encoding) and its main content extracted with resiliparse (about 30x faster than Trafilatura here, see PEERS.md).
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text

from llmctl.data.document import DETAIL_KEY, Document
from llmctl.data.encoding import bom_encoding, decode_html
from llmctl.errors import UsageError
from llmctl.store.fs import open_binary
from llmctl.store.fs import size as file_size

GZIP_MAGIC = b"\x1f\x8b\x08"
HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass
class ExtractConfig:
    main_content: bool = True  # resiliparse main-content heuristics (drops menus, footers)
    list_bullets: bool = True  # keep list bullets, which Gopher's bullet-line rule looks at
    require_2xx: bool = True  # reject redirects and error pages (reason extract.http_status)
    max_payload_bytes: int = 16 * 1024 * 1024  # larger HTTP payloads are unreadable: too_large
    max_text_chars: int = 1_000_000  # larger documents (after extraction) are unreadable: too_large
    text_field: str = "text"  # JSONL / Parquet column with the document text
    id_field: str = "id"  # JSONL / Parquet column with a document id (made from source+row if absent)
    url_field: str = "url"


@dataclass
class Unreadable:
    reason: str
    nbytes: int = 0


@dataclass
class Rejected:
    """A record read fine that is not a usable document (redirect, empty page)."""

    doc: Document
    reason: str
    detail: str | None = None


Record = Document | Unreadable | Rejected
Check = Callable[[Document], "str | None"]  # before extraction: a reason to reject the page (URL rules), or None


def _checked(doc: Document, check: Check | None) -> Rejected | None:
    """The page rejected by `check` (called on the document before its text is extracted), or None."""
    if check is None:
        return None
    reason = check(doc)
    return None if reason is None else Rejected(doc, reason, doc.meta.pop(DETAIL_KEY, None))


def make_id(*parts: str) -> str:
    """A stable document id: 128-bit xxhash of its source and locator."""
    return xxhash.xxh3_128_hexdigest("\x00".join(parts).encode("utf-8", "surrogatepass"))


def input_kind(path: str | Path) -> str | None:
    name = str(path).lower()
    if name.endswith((".warc.wet.gz", ".wet.gz", ".wet")):
        return "wet"
    if name.endswith((".warc", ".warc.gz", ".arc.gz")):
        return "warc"
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return None


# ----------------------------------------------------------------------------- gzip members


def iter_gzip_members(
    path: str | Path, max_bytes: int, chunk: int = 1 << 20
) -> Iterator[tuple[bytes | None, str | None, int]]:
    """Yield (data, error, compressed_size) per gzip member; resync on the next header after an error.

    `data` is None when the member is unusable; `error` is "corrupt_gzip", "truncated_record"
    (the file ends inside a member) or "too_large" (decompresses past `max_bytes`). Memory is
    bounded by one member's compressed bytes plus `max_bytes`.
    """
    with open_binary(path) as f:
        buf = bytearray()
        eof = False
        resyncing = False

        def fill() -> bool:
            nonlocal eof
            if eof:
                return False
            block = f.read(chunk)
            if not block:
                eof = True
                return False
            buf.extend(block)
            return True

        while True:
            if len(buf) < 3 and not fill() and not buf:
                return
            if not buf.startswith(GZIP_MAGIC):
                # garbage between members (or after a corrupt one): skip to the next header
                while (i := buf.find(GZIP_MAGIC, 1)) < 0:
                    keep = buf[-2:]
                    size = len(buf) - 2
                    del buf[:-2]
                    if not fill():
                        if not resyncing:
                            yield None, "corrupt_gzip", size + len(keep)
                        return
                    del keep
                if not resyncing:
                    yield None, "corrupt_gzip", i
                resyncing = True
                del buf[:i]
                continue
            d = zlib.decompressobj(wbits=31)
            out: list[bytes] = []
            size = 0
            pos = 0
            error = None
            while not d.eof:
                if pos >= len(buf) and not fill():
                    error = "truncated_record"
                    break
                piece = bytes(buf[pos : pos + chunk])
                pos += len(piece)
                try:
                    data = d.decompress(piece)
                except zlib.error:
                    error = "corrupt_gzip"
                    break
                size += len(data)
                if size <= max_bytes:
                    out.append(data)
                else:
                    out = []
                    error = error or "too_large"
            if error == "corrupt_gzip":
                if not resyncing:
                    yield None, error, pos
                resyncing = True
                del buf[:1]  # search for the next header after this one
                continue
            consumed = pos - len(d.unused_data) if d.eof else pos
            del buf[:consumed]
            resyncing = False
            if error:
                yield None, error, consumed
                if error == "truncated_record":
                    return
                continue
            yield b"".join(out), None, consumed


# ----------------------------------------------------------------------------- WARC / WET


ENCODING_KEY = "_encoding"  # Document.meta key: how the page's encoding was decided (llmctl.data.encoding)


def html_to_text(body: bytes, charset: str | None, cfg: ExtractConfig) -> tuple[str, str] | Unreadable:
    """(main text, how its encoding was decided) of an HTML payload, or why it is unreadable."""
    if b"\x00" in body[:4096] and not (bom_encoding(body) or "").startswith(("utf-16", "utf-32")):
        return Unreadable("binary_payload", len(body))
    html, _, how = decode_html(body, charset)
    if html.count("\ufffd") > max(8, len(html) // 200):
        return Unreadable("invalid_encoding", len(body))
    return extract_plain_text(
        html, main_content=cfg.main_content, list_bullets=cfg.list_bullets, alt_texts=False, preserve_formatting=True
    ), how


def _warc_records(
    data: bytes, source: str, kind: str, cfg: ExtractConfig, offset: int, check: Check | None = None
) -> Iterator[Record]:
    want = WarcRecordType.conversion if kind == "wet" else WarcRecordType.response
    for rec in ArchiveIterator(io.BytesIO(data), record_types=want, parse_http=(kind == "warc")):
        if _record_is_truncated(data, rec.stream_pos):  # a plain .warc cut inside its last record
            yield Unreadable("truncated_record", len(data) - rec.stream_pos)
            continue
        rid = rec.record_id or f"{source}@{offset + rec.stream_pos}"
        url = rec.headers.get("WARC-Target-URI")
        date = rec.headers.get("WARC-Date")
        doc = Document(id=make_id(rid), text="", source=source, url=url, date=date)
        if (rejected := _checked(doc, check)) is not None:
            yield rejected
            continue
        if rec.content_length > cfg.max_payload_bytes:
            yield Unreadable("too_large", rec.content_length)
            continue
        body = rec.reader.read()
        if kind == "warc":
            if rec.http_headers is None:
                yield Unreadable("malformed_record", len(body))
                continue
            status = rec.http_headers.status_code
            if cfg.require_2xx and not 200 <= (status or 0) < 300:
                yield Rejected(doc, "extract.http_status", str(status))
                continue
            ctype = (rec.http_content_type or "").lower()
            if ctype and not ctype.startswith(HTML_TYPES):
                yield Unreadable("non_html", len(body))
                continue
            text = html_to_text(body, rec.http_charset, cfg)
            if not isinstance(text, Unreadable):
                text, doc.meta[ENCODING_KEY] = text
        else:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = Unreadable("invalid_utf8", len(body))
        if isinstance(text, Unreadable):
            yield text
            continue
        if len(text) > cfg.max_text_chars:
            yield Unreadable("too_large", len(body))
            continue
        doc.text = text
        yield doc if text.strip() else Rejected(doc, "extract.empty")


def _record_is_truncated(data: bytes, start: int = 0) -> bool:
    """Does the WARC record at `start` end before its Content-Length says (the data is cut inside it)?"""
    head_end = data.find(b"\r\n\r\n", start)
    if head_end < 0:
        return True
    for line in data[start:head_end].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            try:
                return len(data) - head_end - 4 < int(line.split(b":", 1)[1])
            except ValueError:
                return True
    return False


def read_warc(
    path: str | Path, source: str, kind: str, cfg: ExtractConfig, report=None, check: Check | None = None
) -> Iterator[Record]:
    if str(path).endswith(".gz"):
        offset = 0
        for data, error, nbytes in iter_gzip_members(path, cfg.max_payload_bytes + (1 << 16)):
            if report:
                report(bytes=nbytes)
            if error:
                yield Unreadable(error, nbytes)
            elif data.startswith(b"WARC/") and _record_is_truncated(data):
                yield Unreadable("truncated_record", nbytes)
            else:
                yield from _warc_records(data, source, kind, cfg, offset, check)
            offset += nbytes
        return
    with open_binary(path) as f:
        data = f.read()  # plain WARC: small test files
    yield from _warc_records(data, source, kind, cfg, 0, check)
    if report:
        report(bytes=len(data))


# ----------------------------------------------------------------------------- JSONL / Parquet


def _open_text(path: str | Path) -> tuple[IO[bytes], IO[bytes]]:
    """(reader, underlying file): both are closed by the caller."""
    raw = open_binary(path)
    return (gzip.GzipFile(fileobj=raw, mode="rb") if str(path).endswith(".gz") else raw), raw


def read_jsonl(
    path: str | Path, source: str, cfg: ExtractConfig, report=None, check: Check | None = None
) -> Iterator[Record]:
    limit = cfg.max_text_chars * 4 + 4096
    f, handle = _open_text(path)
    lineno = 0
    try:
        while True:
            try:
                raw = f.readline(limit)
            except (OSError, EOFError, zlib.error):
                yield Unreadable("corrupt_gzip")
                return
            if not raw:
                return
            lineno += 1
            if report:
                report(bytes=len(raw))
            if not raw.endswith(b"\n") and len(raw) >= limit:
                skipped = len(raw)
                while (more := f.readline(limit)) and not more.endswith(b"\n"):
                    skipped += len(more)
                yield Unreadable("too_large", skipped)
                continue
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield Unreadable("invalid_utf8", len(raw))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                yield Unreadable("malformed_json", len(raw))
                continue
            text = obj.get(cfg.text_field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                yield Unreadable("no_text_field", len(raw))
                continue
            yield from _row_doc(obj, text, source, f"line{lineno}", cfg, check)
    finally:
        f.close()
        handle.close()


def _row_doc(
    row: dict, text: str, source: str, locator: str, cfg: ExtractConfig, check: Check | None = None
) -> Iterator[Record]:
    if len(text) > cfg.max_text_chars:
        yield Unreadable("too_large", len(text))
        return
    rid = row.get(cfg.id_field)
    url = row.get(cfg.url_field)
    doc = Document(
        id=str(rid) if rid is not None else make_id(source, locator),
        text=text,
        source=str(row.get("source") or source),
        url=str(url) if url is not None else None,
        date=str(row["date"]) if row.get("date") is not None else None,
    )
    if (rejected := _checked(doc, check)) is not None:
        yield rejected
        return
    yield doc if text.strip() else Rejected(doc, "extract.empty")


def parquet_columns(path: str | Path) -> list[str]:
    """The columns of a Parquet input; a one-line `UsageError` when it is not Parquet (empty, garbage, cut)."""
    try:
        with open_binary(path) as f:
            return pq.read_schema(f).names
    except (pa.ArrowInvalid, OSError) as e:
        raise UsageError(f"{path}: not a readable Parquet file ({(str(e).strip().splitlines() or ['?'])[0]})") from None


def read_parquet(
    path: str | Path, source: str, cfg: ExtractConfig, report=None, check: Check | None = None
) -> Iterator[Record]:
    pf = pq.ParquetFile(open_binary(path))
    names = pf.schema_arrow.names
    cols = [c for c in (cfg.text_field, cfg.id_field, cfg.url_field, "source", "date") if c in names]
    nbytes = file_size(path)
    total = max(1, pf.metadata.num_rows)
    row_index = 0
    for batch in pf.iter_batches(batch_size=512, columns=cols):
        for row in batch.to_pylist():
            text = row.get(cfg.text_field)
            if not isinstance(text, str):
                yield Unreadable("no_text_field")
            else:
                yield from _row_doc(row, text, source, f"row{row_index}", cfg, check)
            row_index += 1
        if report:
            report(bytes=int(nbytes * batch.num_rows / total))


def read_input(
    path: str | Path, source: str, cfg: ExtractConfig, report=None, check: Check | None = None
) -> Iterator[Record]:
    """All records of one input file, in file order.

    `check`, when given, sees each record's document first (a WARC/WET page's before its payload
    is read and extracted: no text yet), and a reason it returns rejects the record there.
    """
    kind = input_kind(path)
    if kind in ("warc", "wet"):
        return read_warc(path, source, kind, cfg, report, check)
    if kind == "jsonl":
        return read_jsonl(path, source, cfg, report, check)
    if kind == "parquet":
        return read_parquet(path, source, cfg, report, check)
    raise ValueError(f"unsupported input: {path}")
