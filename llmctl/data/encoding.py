"""How an HTML payload's bytes become text: the page's own charset before any guess.

Order (`decide_encoding`), the first that gives a known encoding wins:

1. `http`: the charset of the HTTP Content-Type header;
2. `bom`: a byte-order mark (UTF-8, UTF-16 LE/BE, UTF-32 LE/BE);
3. `meta`: `<meta charset=...>` or `<meta http-equiv="Content-Type" content="...; charset=...">`
   in the first 4096 bytes (HTML5's prescan reads 1024, but browsers re-parse when they meet a later
   declaration, and 3 of the shared crawl's pages declare theirs past byte 1024); a page that declares UTF-8 but is not
   valid UTF-8 is detected instead (`detected`), since its declaration is wrong;
4. `detected`: resiliparse's uchardet detector on the bytes.

Labels are mapped to the WHATWG names (`resiliparse.parse.encoding.map_encoding_to_html5`):
"iso-8859-1" decodes as windows-1252, "gb2312" and "gbk" as gb18030, as browsers do; a label
that is not an encoding at all falls through to the next rule. A UTF-16 or UTF-32 page with a BOM
is decoded (its NUL bytes would otherwise mark it binary). `llmctl filter` counts how each page
was decided in the manifest's counters (`extract.encoding.http`, `.bom`, `.meta`, `.detected`).
"""

from __future__ import annotations

import codecs
import re

from resiliparse.parse.encoding import bytes_to_str, detect_encoding, map_encoding_to_html5

HOW = ("http", "bom", "meta", "detected")
META_WINDOW = 4096
_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_META = re.compile(rb"<meta\s[^>]*?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.I)


def bom_encoding(body: bytes) -> str | None:
    for bom, name in _BOMS:
        if body.startswith(bom):
            return name
    return None


def meta_charset(body: bytes) -> str | None:
    """The encoding a page declares in a <meta> tag of its first META_WINDOW bytes (WHATWG name), or None."""
    m = _META.search(body[:META_WINDOW])
    if not m:
        return None
    name = map_encoding_to_html5(m.group(1).decode("ascii", "replace"), fallback_utf8=False)
    if name and name.startswith("utf-16"):  # HTML5: a meta utf-16 in an ASCII-readable page means utf-8
        name = "utf-8"
    return name


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut at the end of a truncated payload is fine
        return e.start >= len(body) - 3 and e.reason == "unexpected end of data"
    return True


def decide_encoding(body: bytes, http_charset: str | None = None) -> tuple[str, str]:
    """(encoding, how it was decided: one of HOW) for an HTML payload."""
    if http_charset:
        name = map_encoding_to_html5(http_charset, fallback_utf8=False)
        if name:
            return name, "http"
    bom = bom_encoding(body)
    if bom:
        return bom, "bom"
    meta = meta_charset(body)
    if meta and (meta != "utf-8" or _is_utf8(body)):
        return meta, "meta"
    return detect_encoding(body), "detected"


def decode_html(body: bytes, http_charset: str | None = None) -> tuple[str, str, str]:
    """(text, encoding, how) of an HTML payload; undecodable bytes become U+FFFD, a BOM is dropped."""
    encoding, how = decide_encoding(body, http_charset)
    if how == "bom":
        bom = next(b for b, n in _BOMS if n == encoding)
        return body[len(bom) :].decode(encoding, errors="replace"), encoding, how
    return bytes_to_str(body, encoding, errors="replace"), encoding, how
