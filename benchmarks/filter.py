"""Benchmark `llmctl filter` against HF datatrove on the same crawl files, in the same run.

    .venv/bin/python benchmarks/filter.py [--crawl ../shared/data/crawl] [--repeat 4] [--workers 1 2]

Both sides read the same WARC files and run the same kinds of steps: HTML extraction (llmctl:
resiliparse; datatrove: Trafilatura, its default), language ID keeping English (fastText lid.176
on both sides, threshold 0.65), C4 quality rules (5 words per line, 3 sentences, as the reference
implementation), Gopher quality, Gopher repetition, PII. llmctl's toxicity step (datatrove has none) is off in the compared runs;
`--toxicity-row` adds an llmctl run with `--toxicity` per worker count, reported separately. datatrove 0.10.1 is installed by this script into
benchmarks/.venvs/datatrove (see ../shared/PEERS.md for the offline set-up: its bad-words list is
put where it looks, HF_HUB_OFFLINE=1; its LanguageFilter downloads lid.176.bin at run time, so the
lid.176.ftz that llmctl ships and its langid step loads, is put where it
looks, under the .bin's name). llmctl's dedup and quality steps are off so the work compared is
the same. Prints documents/s and MB/s
(of uncompressed WARC) per core, peak RSS, llmctl's funnel, the ratio and the load average
(1 minute) before and after the runs: figures are only comparable on a quiet machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "benchmarks" / ".venvs" / "datatrove"
DT_VERSION = "0.10.1"

DATATROVE_SCRIPT = r"""
import os, sys, time, json
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import WarcReader
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters import C4QualityFilter, C4BadWordsFilter, GopherQualityFilter, GopherRepetitionFilter, LanguageFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.writers import ParquetWriter
def main():
    inp, out, workers, tasks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    pipe = [
        WarcReader(inp, glob_pattern="*.warc.gz"),
        Trafilatura(favour_precision=True, timeout=10.0),
        LanguageFilter(languages=["en"], language_threshold=0.65),
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(min_num_sentences=3, min_words_per_line=5, filter_no_terminal_punct=True),
        C4BadWordsFilter(),
        PIIFormatter(),
        ParquetWriter(out + "/data"),
    ]
    t = time.time()
    LocalPipelineExecutor(pipeline=pipe, tasks=tasks, workers=workers, logging_dir=out + "/logs",
                          skip_completed=False).run()
    print(json.dumps({"seconds": time.time() - t}))


if __name__ == "__main__":  # datatrove starts its workers with forkserver: the script is re-imported
    main()
"""


def ensure_datatrove() -> Path:
    py = VENV / "bin" / "python"
    if (
        not py.exists()
        or subprocess.run(
            [py, "-c", "import datatrove, spacy, trafilatura, lxml_html_clean"], capture_output=True
        ).returncode
    ):
        VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run(
            [
                py,
                "-m",
                "pip",
                "install",
                "-q",
                f"datatrove[processing,io]=={DT_VERSION}",
                "spacy",
                "aiohttp",
                "lxml_html_clean",
            ],
            check=True,
        )
    # datatrove's C4BadWordsFilter downloads its list at run time: put the shipped list where it looks.
    code = r"""
import os, huggingface_hub, shutil
from datatrove.io import strip_protocol
from datatrove.pipeline.filters import c4_filters
d = huggingface_hub.cached_assets_path(library_name="datatrove", namespace="filters", subfolder="c4_badwords")
name = strip_protocol(c4_filters._EN_BADWORDS_URL).replace("/", "_")
shutil.copy(os.environ["BADWORDS"], os.path.join(d, name))
open(os.path.join(d, name + ".completed"), "w").close()
from datatrove.utils.lid import FT176LID
d = huggingface_hub.cached_assets_path(library_name="datatrove", namespace="lid", subfolder=FT176LID.MODEL_SUBFOLDER)
name = strip_protocol(FT176LID.MODEL_URL).replace("/", "_")
shutil.copy(os.environ["LID"], os.path.join(d, name))
open(os.path.join(d, name + ".completed"), "w").close()
"""
    from llmctl.data.steps.langid import default_model_path

    env = {
        **os.environ,
        "BADWORDS": str(ROOT / "llmctl" / "data" / "resources" / "badwords_en.txt"),
        "LID": str(default_model_path()),
    }
    subprocess.run([py, "-c", code], check=True, env=env)
    return py


def prepare_input(crawl: Path, repeat: int, work: Path) -> tuple[Path, int, int]:
    """Copy the crawl files `repeat` times; return the folder, response records and uncompressed bytes."""
    d = work / "input"
    d.mkdir(parents=True, exist_ok=True)
    files = sorted(crawl.glob("*.warc.gz"))
    nbytes = sum(len(gzip.open(f).read()) for f in files) * repeat
    records = 0
    manifest = crawl / "manifest.jsonl"
    if manifest.exists():
        records = sum(1 for _ in open(manifest)) * repeat
    for r in range(repeat):
        for f in files:
            shutil.copy(f, d / f"r{r:02d}-{f.name}")
    return d, records, nbytes


_RSS_WRAPPER = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
)


def timed(cmd: list, env: dict | None = None) -> tuple[float, int, str]:
    """Run a command; wall seconds, peak RSS in MB (largest process of its tree), stdout."""
    t = time.time()
    r = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *map(str, cmd)], capture_output=True, text=True, env=env)
    secs = time.time() - t
    if r.returncode:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{r.stderr[-3000:]}")
    peak = int(r.stderr.rsplit("MAXRSS", 1)[1].split()[0]) // 1024
    return secs, peak, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crawl", default=str(ROOT.parent / "shared" / "data" / "crawl"))
    ap.add_argument("--repeat", type=int, default=4, help="copies of the crawl (4 x 49.6 MB = ~200 MB of WARC)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--toxicity-row", action="store_true", help="also time llmctl with --toxicity")
    args = ap.parse_args()
    load_before = os.getloadavg()

    work = Path(tempfile.mkdtemp(prefix="llmctl-bench-filter-"))
    inp, records, nbytes = prepare_input(Path(args.crawl), args.repeat, work)
    print(f"input: {records} response records, {nbytes / 1e6:.1f} MB uncompressed WARC ({args.repeat} x {args.crawl})")
    llmctl = [sys.executable, "-m", "llmctl"]
    rows = []
    funnel = None
    tox_rows = []
    for w in args.workers:
        for tox in (False, True) if args.toxicity_row else (False,):
            out = work / f"llmctl-w{w}-{tox}"
            cmd = llmctl + ["filter", str(inp), "-o", str(out), "--workers", str(w), "--no-dedup"]
            secs, rss, _ = timed(cmd + (["--toxicity"] if tox else []))
            m = json.loads((out / "_manifest.json").read_text())
            if not tox:
                funnel = m["stats"]["funnel"]
            (tox_rows if tox else rows).append(("llmctl +toxicity" if tox else "llmctl", w, secs, rss, m["num_rows"]))
            shutil.rmtree(out, ignore_errors=True)
    dt_rows = []
    if not args.skip_datatrove:
        py = ensure_datatrove()
        script = work / "dt.py"
        script.write_text(DATATROVE_SCRIPT)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        n_files = len(list(inp.glob("*.warc.gz")))
        for w in args.workers:
            out = work / f"datatrove-w{w}"
            secs, rss, _ = timed([py, script, str(inp), str(out), str(w), str(n_files)], env=env)
            kept = 0
            try:
                import pyarrow.parquet as pq

                kept = sum(pq.read_metadata(p).num_rows for p in (out / "data").glob("*.parquet"))
            except Exception:  # noqa: BLE001 - the count is informative only
                pass
            dt_rows.append(("datatrove", w, secs, rss, kept))
    print("\n| tool | workers | seconds | docs/s | docs/s per core | MB/s per core | peak RSS MB | kept |")
    print("|---|---|---|---|---|---|---|---|")
    for tool, w, secs, rss, kept in rows + tox_rows + dt_rows:
        print(
            f"| {tool} | {w} | {secs:.1f} | {records / secs:.1f} | {records / secs / w:.1f} | "
            f"{nbytes / 1e6 / secs / w:.2f} | {rss} | {kept} |"
        )
    for (_, w, s1, *_), (_, _, s2, *_) in zip(rows, dt_rows):
        print(f"\nllmctl / datatrove documents/s per core with {w} worker(s), language ID on both: {s2 / s1:.1f}x")
    for (_, w, s1, *_), (_, _, s2, *_) in zip(tox_rows, dt_rows):
        print(f"llmctl --toxicity / datatrove with {w} worker(s): {s2 / s1:.1f}x")
    load_after = os.getloadavg()
    print(f"\nload average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("\nllmctl funnel (last run):")
    for r in funnel or []:
        print(f"  {r['row']:<40} {r['docs']:>7}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
