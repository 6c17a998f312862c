"""Build tests/data/charset_pages.warc.gz: real pages of the shared crawl, one per way a page's
encoding is decided (llmctl.data.encoding), plus two of them re-encoded with a byte-order mark.

    python tests/data/make_charset_pages.py [--crawl ../shared/data/crawl]

Records copied byte for byte (each is one gzip member of /work/shared/data/crawl, at the offset
and length its manifest.jsonl gives):
- meta, UTF-8 read as cp1252 before: https://www.bbc.com/news/world-us-canada-52241221 (crawl-00001,
  "de Blasio\\xa0indicated" came out as "de BlasioÂ\\xa0indicated") and https://commoncrawl.org/ccbot
  (crawl-00004);
- meta, iso-8859-1 past byte 1024: http://06.live-radsport.ch/tippspiel/stats_140_petzi.html (crawl-00005);
- detected (no HTTP charset, no meta): https://www.thespacereview.com/article/3834/1 (crawl-00002);
- http: http://www.iana.org/about (crawl-00000).
Made here: the ccbot page's body re-encoded as UTF-16-LE and as UTF-8, each with a BOM, served
as "text/html" without a charset (URIs https://commoncrawl.org/ccbot?utf16, ?utf8bom).
"""

from __future__ import annotations

import argparse
import codecs
import gzip
import io
import sys
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecordType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from warc_utils import response_record  # noqa: E402

COPIED = [("crawl-00001.warc.gz", 601138, 50162), ("crawl-00004.warc.gz", 809247, 4588),
          ("crawl-00005.warc.gz", 1389919, 10803), ("crawl-00002.warc.gz", 953987, 8575),
          ("crawl-00000.warc.gz", 1179658, 3042)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--crawl", default=str(HERE.parents[2] / "shared" / "data" / "crawl"))
    ap.add_argument("--out", default=str(HERE / "charset_pages.warc.gz"))
    a = ap.parse_args()
    members = []
    for name, offset, length in COPIED:
        with open(Path(a.crawl) / name, "rb") as f:
            f.seek(offset)
            members.append(f.read(length))
    rec = next(iter(ArchiveIterator(io.BytesIO(gzip.decompress(members[1])), record_types=WarcRecordType.response, parse_http=True)))
    body = rec.reader.read()
    for query, data in (("utf16", codecs.BOM_UTF16_LE + body.decode("utf-8").encode("utf-16-le")),
                        ("utf8bom", codecs.BOM_UTF8 + body)):
        members.append(gzip.compress(response_record(f"https://commoncrawl.org/ccbot?{query}", data,
                                                     content_type="text/html"), mtime=0))
    Path(a.out).write_bytes(b"".join(members))
    print(f"wrote {a.out}: {len(members)} records")


if __name__ == "__main__":
    main()
