"""A page's own charset: HTTP header, else BOM, else <meta>, else detection (real crawl pages).

tests/fixtures/charset_pages.warc.gz is built by tests/fixtures/make_charset_pages.py from
../shared/data/crawl (which pages, and the two re-encoded with a BOM, are listed there).
"""

from __future__ import annotations

import codecs
from pathlib import Path

from llmctl.data.document import Document
from llmctl.data.encoding import decide_encoding, decode_html
from llmctl.data.extract import ENCODING_KEY, ExtractConfig, read_input

PAGES = Path(__file__).parents[1] / "fixtures" / "charset_pages.warc.gz"


def docs() -> dict[str, Document]:
    return {r.url: r for r in read_input(PAGES, "charset", ExtractConfig()) if isinstance(r, Document)}


def test_each_page_decoded_in_its_own_charset():
    d = docs()
    how = {url: doc.meta[ENCODING_KEY] for url, doc in d.items()}
    assert how == {
        "https://www.bbc.com/news/world-us-canada-52241221": "meta",
        "https://commoncrawl.org/ccbot": "meta",
        "http://06.live-radsport.ch/tippspiel/stats_140_petzi.html": "meta",
        "https://www.thespacereview.com/article/3834/1": "detected",
        "http://www.iana.org/about": "http",
        "https://commoncrawl.org/ccbot?utf16": "bom",
        "https://commoncrawl.org/ccbot?utf8bom": "bom",
    }
    bbc = d["https://www.bbc.com/news/world-us-canada-52241221"].text
    assert "de Blasio\xa0indicated" in bbc and "Â" not in bbc  # was "de BlasioÂ\xa0indicated" (cp1252)
    # the UTF-16 page (NUL bytes: dropped as binary before) and the UTF-8 BOM page read as the original
    ccbot = d["https://commoncrawl.org/ccbot"].text
    assert "CCBot" in ccbot
    assert d["https://commoncrawl.org/ccbot?utf16"].text == ccbot == d["https://commoncrawl.org/ccbot?utf8bom"].text
    assert "\ufffd" not in d["http://06.live-radsport.ch/tippspiel/stats_140_petzi.html"].text


def test_decision_order():
    page = '<html><head><meta charset="utf-8"></head><body>café</body></html>'
    utf8 = page.encode("utf-8")
    assert decide_encoding(utf8, None) == ("utf-8", "meta")
    assert decode_html(utf8)[0].endswith("café</body></html>")  # detection alone read it as cp1250: "cafĂ©"
    assert decide_encoding(utf8, "iso-8859-2") == ("iso8859-2", "http")  # the header wins
    assert decide_encoding(codecs.BOM_UTF8 + utf8, None) == ("utf-8", "bom")
    http_equiv = b'<meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1"><p>caf\xe9</p>'
    assert decide_encoding(http_equiv, None) == ("cp1252", "meta")  # WHATWG: latin-1 labels are windows-1252
    lying = b'<meta charset="utf-8"><p>' + "Größe und Qualität ".encode("cp1252") * 20 + b"</p>"
    assert decide_encoding(lying, None)[1] == "detected"  # declares UTF-8, is not: its bytes decide
    assert decide_encoding(b'<meta charset="no-such"><p>plain</p>', "bogus")[1] == "detected"
    assert decide_encoding("<p>x</p>".encode("utf-32"), None) == ("utf-32-le", "bom")
