"""Build tests/data/quality_{hq,lq}.jsonl.gz from ../shared/data/crawl (see tests/data/README.md)."""
import gzip, json
from pathlib import Path
from llmctl.data.extract import ExtractConfig, read_input, make_id, Document
CRAWL = Path("/work/shared/data/crawl")
label = {}
for line in open(CRAWL / "manifest.jsonl"):
    r = json.loads(line)
    if r["kind"] == "original":
        label[make_id(r["record_id"])] = r["source"]
hq, lq = [], []
for f in sorted(CRAWL.glob("crawl-*.warc.gz")):
    for rec in read_input(f, f.name, ExtractConfig()):
        if isinstance(rec, Document) and rec.id in label and len(rec.text.split()) >= 50:
            row = {"id": rec.id, "url": rec.url, "source": label[rec.id], "text": rec.text[:4000]}
            (hq if label[rec.id].startswith("doc:") else lq).append(row)
for name, rows in (("hq", hq), ("lq", lq)):
    with gzip.open(f"tests/data/quality_{name}.jsonl.gz", "wt", encoding="utf-8") as g:
        for r in rows:
            g.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(name, len(rows))
