"""Held-out agreement of `llmctl quality train --target grade` heads with a judge's grades.

    .venv/bin/python benchmarks/quality_grades.py [--crawl ../shared/data/crawl] [--heads classes ridge binary]
    .venv/bin/python benchmarks/quality_grades.py --serve 8001    # only the judge, on 127.0.0.1:8001

The judge is NOT a language model: no model that could grade pages runs on this project's machine,
so a deterministic keyword heuristic stands in for it, served over the OpenAI-compatible chat API
on 127.0.0.1 so the real `llmctl quality annotate --judge-url` chain runs end to end. It reads the
page out of llmctl's grading prompt and grades it by `heuristic_grade` (density of teaching words
against commerce/navigation words, and length); about 1 answer in 40 (by a hash of the page) is
"I cannot grade this page." so unparsed answers occur. The figures therefore measure how well each
head reproduces a judge's grades from the page text, not how educational the pages are.

The chain: `llmctl filter CRAWL --no-c4 --no-gopher --no-pii --languages ""` (extraction, exact and
near dedup: every language), `llmctl quality annotate` of those documents plus the quality
fixtures (tests/fixtures/quality_{hq,lq}.jsonl.gz), `llmctl quality train GRADES --threshold 3
--head H` for each head (the same seeded held-out split for all), and `llmctl filter CRAWL
--quality-model M --quality-threshold 3`. Prints per head the held-out accuracy at grade 3,
Spearman correlation and (grade heads) mean absolute error. No timing: figures are deterministic.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = ROOT / "llmctl" / "data" / "resources" / "annotate_prompt.txt"
TEACH = frozenset(
    "example examples explain explains explained learn learning tutorial chapter section define defined "
    "definition means function method methods theory because therefore step steps use using command commands "
    "install configure file files system process data value values result results study research history "
    "science how why describes description note manual reference guide documentation type types".split()
)
SELL = frozenset(
    "buy price prices cart shop shopping sale sales discount offer offers order orders shipping free deal deals "
    "login sign subscribe newsletter cookie cookies account click here menu home contact share follow".split()
)


def heuristic_grade(text: str) -> int:
    """0-5: 1.5 + teaching words per 100 words x 0.6 - commerce/navigation words per 100 x 0.8,
    +1 from 400 words, -1 under 100, floored and clipped."""
    words = re.findall(r"[a-z]+", text.lower())
    n = max(1, len(words))
    teach = 100 * sum(w in TEACH for w in words) / n
    sell = 100 * sum(w in SELL for w in words) / n
    score = 1.5 + 0.6 * teach - 0.8 * sell + (1 if n >= 400 else 0) - (1 if n < 100 else 0)
    return max(0, min(5, math.floor(score)))


def answer(prompt: str, template: str) -> str:
    """The judge's answer to one grading prompt (the page is what the template's {text} holds)."""
    head, _, tail = template.partition("{text}")
    page = prompt[len(head) : len(prompt) - len(tail)] if prompt.startswith(head) else prompt
    if zlib.crc32(page.encode("utf-8")) % 40 == 0:
        return "I cannot grade this page."
    return f"Graded by keyword density and length.\nScore: {heuristic_grade(page)}"


def serve(port: int = 0, template: str | None = None) -> tuple[ThreadingHTTPServer, str]:
    """Start the judge on 127.0.0.1 in a thread; (server, base URL ending in /v1)."""
    template = template if template is not None else PROMPT.read_text(encoding="utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            content = answer(body["messages"][-1]["content"], template)
            out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def llmctl(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "llmctl", *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"llmctl {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crawl", default=str(ROOT.parent / "shared" / "data" / "crawl"))
    ap.add_argument("--heads", nargs="+", default=["classes", "ridge", "binary"])
    ap.add_argument("--serve", type=int, metavar="PORT", help="only run the judge on 127.0.0.1:PORT")
    ap.add_argument("--work", help="keep the outputs in this folder (default: a temporary one)")
    args = ap.parse_args()
    if args.serve is not None:
        server, url = serve(args.serve)
        print(f"heuristic judge at {url} (Ctrl-C ends it)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            server.shutdown()
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="llmctl-quality-grades-"))
    docs, grades = work / "docs", work / "grades"
    llmctl("filter", args.crawl, "-o", str(docs), "--no-c4", "--no-gopher", "--no-pii", "--languages", "")
    fixtures = [str(ROOT / "tests" / "fixtures" / f"quality_{s}.jsonl.gz") for s in ("hq", "lq")]
    server, url = serve()
    try:
        print(
            llmctl(
                "quality",
                "annotate",
                str(docs),
                *fixtures,
                "-o",
                str(grades),
                "--judge-url",
                url,
                "--judge",
                "heuristic",
            ).strip()
        )
    finally:
        server.shutdown()
    print("\n| head | held-out docs | accuracy at grade 3 | Spearman | MAE | kept by filter --quality-threshold 3 |")
    print("|---|---|---|---|---|---|")
    for head in args.heads:
        model = work / f"model-{head}"
        llmctl(
            "quality",
            "train",
            str(grades),
            "--target",
            "grade",
            "--threshold",
            "3",
            "--head",
            head,
            "-o",
            str(model),
            "--overwrite",
        )
        s = json.loads((model / "_manifest.json").read_text())["stats"]
        h = s["heldout"]
        kept = json.loads(
            (Path(llmctl_filter(args.crawl, work / f"edu-{head}", model, head)) / "_manifest.json").read_text()
        )["num_rows"]
        print(
            f"| {head} | {sum(s['heldout_docs'].values())} | {h['accuracy']:.3f} | {h['spearman']} | "
            f"{h.get('mae', '-')} | {kept} |"
        )
    print(f"\noutputs in {work}")


def llmctl_filter(crawl: str, out: Path, model: Path, head: str) -> str:
    """The crawl filtered by the model: a grade head at grade 3, the binary head at P(grade >= 3) 0.5."""
    threshold = "0.5" if head == "binary" else "3"
    llmctl(
        "filter", crawl, "-o", str(out), "--quality-model", str(model), "--quality-threshold", threshold, "--overwrite"
    )
    return str(out)


if __name__ == "__main__":
    main()
