"""Dedup benchmark: precision/recall of removal, documents/s and peak memory at 1x/4x/16x input,
llmctl filter (exact + MinHash) against datatrove's 4-stage MinHash on the same JSONL.

Labelled set, built from ../shared/data/crawl: the extracted text of every original page (50+
words, none within Jaccard 0.5 of another). Scale k copies it k times with every word suffixed by a letter code of the copy, so
copies share no shingle and the corpus grows with realistic document sizes. Into each copy we
plant 5% exact duplicates (case and whitespace changed), and near duplicates made by replacing
random words, at true 5-gram Jaccard levels measured after the edit: 5% each above the 0.8
threshold (about 0.95, 0.9, 0.85) and 5% each below (about 0.7, 0.5), which should be kept.

    python benchmarks/dedup.py                 # 1x, 4x, 16x, with datatrove
    python benchmarks/dedup.py --scales 1 --no-datatrove
    python benchmarks/dedup.py --scales 16 --no-datatrove --partitions 16   # llmctl's shuffle in 16 partitions

datatrove runs in its own virtualenv, benchmarks/.venvs/datatrove (created here, see
../shared/PEERS.md), as a subprocess on the same files, with its default 14 x 8 buckets.
"""

from __future__ import annotations

import sys

# benchmarks/ holds scripts named like stdlib modules (tokenize.py): keep it off the import path
sys.path[:] = [p for p in sys.path if p not in ("", __import__("os").path.dirname(__file__))]

import argparse
import json
import os
import random
import subprocess
import time
from pathlib import Path

SHARED_DATA = Path(
    os.environ.get("LLMCTL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)  # ../shared/data beside the checkout
CRAWL = SHARED_DATA / "crawl"
ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venvs" / "datatrove"
LEVELS_ABOVE, LEVELS_BELOW = (0.95, 0.9, 0.85), (0.7, 0.5)


def base_pages() -> list[str]:
    from llmctl.data.extract import Document, ExtractConfig, make_id, read_input

    orig = {
        make_id(json.loads(x)["record_id"])
        for x in open(CRAWL / "manifest.jsonl")
        if json.loads(x)["kind"] == "original"
    }
    from datasketch import MinHash, MinHashLSH

    from llmctl.data.dedup.base import jaccard, normalize_text, shingles

    # the real crawl has natural duplicates too (one page under several URLs): keep only pages
    # with true Jaccard < 0.5 to every earlier one, so that every duplicate in the set is planted
    texts, sets = [], []
    lsh = MinHashLSH(threshold=0.5, num_perm=128)
    for f in sorted(CRAWL.glob("crawl-*.warc.gz")):
        for rec in read_input(f, f.name, ExtractConfig()):
            if isinstance(rec, Document) and rec.id in orig and len(rec.text.split()) >= 50:
                sh = shingles(normalize_text(rec.text), 5)
                m = MinHash(num_perm=128)
                m.update_batch(list(sh))
                if any(jaccard(sh, sets[c]) >= 0.5 for c in lsh.query(m)):
                    continue
                lsh.insert(len(texts), m)
                texts.append(rec.text)
                sets.append(sh)
    return texts


def near_copy(text: str, target: float, rng: random.Random, n: int = 5) -> tuple[str, float]:
    from llmctl.data.dedup.base import jaccard, normalize_text, shingles

    words = text.split(" ")
    base = shingles(normalize_text(text), n)
    rate = 0.0
    out, j = text, 1.0
    while j > target and rate < 1:
        rate += 0.002
        w = [x if rng.random() > rate else f"edit{rng.randrange(10**6)}" for x in words]
        out = " ".join(w)
        j = jaccard(base, shingles(normalize_text(out), n))
    return out, j


def _letters(k: int) -> str:
    out = ""
    while True:
        k, r = divmod(k, 26)
        out = "abcdefghijklmnopqrstuvwxyz"[r] + out
        if k == 0:
            return out


def build(pages: list[str], scale: int, d: Path, seed: int = 0) -> dict:
    """JSONL shards (one per copy) + labels: id -> (kind, dup_of, jaccard)."""
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    labels, paths = {}, []
    for k in range(scale):
        docs = []
        for i, t in enumerate(pages):
            # a letter suffix: datatrove's normalization maps digits to 0, so "word1" and "word2" would be equal
            text = t if k == 0 else " ".join(f"{w}q{_letters(k)}" for w in t.split(" "))
            docs.append({"id": f"c{k}-{i}", "text": text})
            labels[f"c{k}-{i}"] = ("original", None, 0.0)
        m = len(pages) // 20
        idx = rng.sample(range(len(pages)), m * (1 + len(LEVELS_ABOVE) + len(LEVELS_BELOW)))
        for j, i in enumerate(idx[:m]):
            docs.append({"id": f"c{k}-x{j}", "text": docs[i]["text"].upper().replace(" ", "  ")})
            labels[f"c{k}-x{j}"] = ("exact", f"c{k}-{i}", 1.0)
        for li, level in enumerate(LEVELS_ABOVE + LEVELS_BELOW):
            for j, i in enumerate(idx[m * (li + 1) : m * (li + 2)]):
                text, jac = near_copy(docs[i]["text"], level, rng)
                docs.append({"id": f"c{k}-n{li}-{j}", "text": text})
                labels[f"c{k}-n{li}-{j}"] = ("near", f"c{k}-{i}", jac)
        # originals first: "keep the first" then keeps the original of each planted pair
        p = d / f"shard-{k:03d}.jsonl"
        p.write_text("".join(json.dumps(x) + "\n" for x in docs))
        paths.append(str(p))
    return {"paths": paths, "labels": labels}


def score(labels: dict, removed: set[str], threshold: float = 0.8) -> dict:
    """Cluster-level scoring: which copy of a duplicate group a tool keeps is its own choice.

    A group is an original plus its planted copies at Jaccard >= threshold; keeping exactly one of
    its members is right. Removals within a group count towards recall up to |group| - 1; removing
    every member, or any document that is in no group (the originals without copies and the copies
    below the threshold), is a false removal.
    """
    groups: dict[str, list[str]] = {}
    for i, (kind, dup_of, j) in labels.items():
        if kind == "exact" or (kind == "near" and j >= threshold):
            groups.setdefault(dup_of, [dup_of]).append(i)
    in_group = {m for g in groups.values() for m in g}
    wanted = sum(len(g) - 1 for g in groups.values())
    tp = sum(min(sum(m in removed for m in g), len(g) - 1) for g in groups.values())
    fp = sum(all(m in removed for m in g) for g in groups.values()) + sum(
        i in removed for i in labels if i not in in_group
    )
    distinct = len(groups) + sum(1 for i in labels if i not in in_group)
    return {
        "recall": round(tp / max(1, wanted), 4),
        "precision": round(tp / max(1, tp + fp), 4),
        "distinct_removed_frac": round(fp / max(1, distinct), 4),
        "duplicates": wanted,
        "distinct": distinct,
    }


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Run a command; returns (seconds, peak RSS in MB of its largest process)."""
    t = time.time()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr.read()[-2000:]}")
    return time.time() - t, ru.ru_maxrss / 1024


def run_llmctl(
    paths: list[str], out: Path, workers: int, verify: str = "jaccard", partitions: int | None = None
) -> tuple[set[str], float, float]:
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # a finished output with the same config would be reused, not timed
    cmd = [
        sys.executable,
        "-m",
        "llmctl",
        "filter",
        *paths,
        "-o",
        str(out),
        "--overwrite",
        "-w",
        str(workers),
        "--no-c4",
        "--no-gopher",
        "--no-pii",
        "--no-c4-span",
        "--set",
        f"dedup.verify={verify}",
    ]
    if partitions is not None:
        cmd += ["--set", f"dedup.partitions={partitions}"]
    secs, mb = timed(cmd)
    import pyarrow.parquet as pq

    removed = {
        r["id"]
        for f in Path(f"{out}.rejected").glob("*.parquet")
        for r in pq.read_table(f, columns=["id", "reason"]).to_pylist()
        if r["reason"].startswith("dedup.")
    }
    return removed, secs, mb


DATATROVE = r"""
import sys, json
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupSignature, MinhashDedupBuckets,
    MinhashDedupCluster, MinhashDedupFilter)
def main():
    inp, work, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = MinhashConfig()
    n = len([f for f in __import__("os").listdir(inp) if f.endswith(".jsonl")])
    def run(pipeline, tasks, name):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=f"{work}/logs/{name}").run()
    run([JsonlReader(inp), MinhashDedupSignature(output_folder=f"{work}/sigs", config=cfg)], n, "s1")
    run([MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=cfg)], cfg.num_buckets, "s2")
    run([MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=cfg)], 1, "s3")
    run([JsonlReader(inp), MinhashDedupFilter(input_folder=f"{work}/remove_ids",
         exclusion_writer=JsonlWriter(f"{work}/removed", compression=None)), JsonlWriter(f"{work}/kept", compression=None)], n, "s4")


if __name__ == "__main__":  # datatrove's workers start with forkserver: the script is re-imported
    main()
"""


def ensure_datatrove() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [
                str(py),
                "-m",
                "pip",
                "install",
                "-q",
                "datatrove[processing,io]==0.10.1",
                "spacy",
                "aiohttp",
                "lxml_html_clean",
            ],
            check=True,
        )
    return py


def run_datatrove(py: Path, paths: list[str], work: Path, workers: int) -> tuple[set[str], float, float]:
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    script = work / "dt.py"
    script.write_text(DATATROVE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    secs, mb = timed([str(py), str(script), str(Path(paths[0]).parent), str(work), str(workers)], env)
    removed = {json.loads(x)["id"] for f in (work / "removed").glob("*.jsonl") for x in open(f)}
    return removed, secs, mb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-datatrove", action="store_true")
    ap.add_argument("--verify", default="jaccard", help="llmctl's candidate check: none, signature, jaccard")
    ap.add_argument("--partitions", type=int, default=None, help="llmctl's dedup.partitions (default: automatic)")
    ap.add_argument("--work", default="/tmp/llmctl-bench-dedup")
    a = ap.parse_args()
    work = Path(a.work)
    pages = base_pages()
    print(f"{len(pages)} distinct pages from {CRAWL}")
    py = None if a.no_datatrove else ensure_datatrove()
    for scale in [int(s) for s in a.scales.split(",")]:
        data = build(pages, scale, work / f"in-{scale}x")
        n = len(data["labels"])
        removed, secs, mb = run_llmctl(data["paths"], work / f"out-{scale}x", a.workers, a.verify, a.partitions)
        s = score(data["labels"], removed)
        line = (
            f"{scale:>3}x {n:>6} docs | llmctl: {n / secs:7.1f} docs/s, peak {mb:6.0f} MB, recall {s['recall']:.3f}, "
            f"precision {s['precision']:.3f}, distinct removed {s['distinct_removed_frac']:.2%}"
        )
        if py is not None:
            dremoved, dsecs, dmb = run_datatrove(py, data["paths"], work / f"dt-{scale}x", a.workers)
            ds = score(data["labels"], dremoved)
            line += (
                f" | datatrove: {n / dsecs:6.1f} docs/s, peak {dmb:6.0f} MB, recall {ds['recall']:.3f}, "
                f"precision {ds['precision']:.3f} | speed ratio {dsecs / secs:.2f}x"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
