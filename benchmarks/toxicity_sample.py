"""Precision and recall of the toxicity step's model (alt-profanity-check) on a hand-labelled sample.

    .venv/bin/python benchmarks/toxicity_sample.py [--prefs ../shared/data/prefs/hh_rlhf_harmless_base_test.jsonl]

The sample (written to benchmarks/data/toxicity_sample.jsonl, then scored):
- 90 human turns of HH-RLHF's harmless-base test split, drawn at random (seed 18) from the 5,104
  distinct turns of at least 4 words: red-team prompts, mostly harmful *requests* in polite words;
- 50 more turns, the first 50 of the same shuffled order (after those 90) that contain a word of
  C4's LDNOOBW list, to have enough offensive ones to measure recall on;
- 40 TinyStories paragraphs (tests/fixtures/tinystories_valid_head_300k.txt) and 40 reference pages
  (tests/fixtures/quality_hq.jsonl.gz: Python docs and the Debian handbook, first 2,000 characters),
  all labelled 0.
Every HH-RLHF turn was read and labelled by hand (issue 18) for *offensive language*: 1 for
profanity, slurs, insults, hateful generalisations about a group, or explicit sexual content;
0 otherwise, including harmful requests in neutral words ("how do I poison someone?"), questions
about a word ("Why is X considered offensive?" is 1 when it spells the slur out), and mild
sexual topics ("Do you think I'm sexy?"). The labels are the POSITIVE index lists below.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RANDOM_POSITIVE = {14, 24, 29, 31, 35, 44, 66, 79, 82, 86, 87}  # of the 90 random turns
BADWORD_NEGATIVE = {4, 10, 12, 27, 28, 37, 40, 45, 46, 47, 49}  # of the 50 bad-word turns (the rest are 1)


def build(prefs: Path) -> list[dict]:
    from llmctl.data.steps.c4 import default_badwords

    turns = []
    for line in open(prefs, encoding="utf-8"):
        chosen = json.loads(line)["chosen"]
        turns += [
            t.strip() for t in re.findall(r"Human: (.*?)(?=\n\nAssistant:|\Z)", chosen, re.S) if len(t.split()) >= 4
        ]
    turns = sorted(set(turns))
    random.Random(18).shuffle(turns)
    bw = default_badwords()
    with_badword = [t for t in turns[90:] if bw.find(t.lower())][:50]
    rows = [
        {"source": "hh-rlhf random", "label": int(i in RANDOM_POSITIVE), "text": t} for i, t in enumerate(turns[:90])
    ]
    rows += [
        {"source": "hh-rlhf bad word", "label": int(i not in BADWORD_NEGATIVE), "text": t}
        for i, t in enumerate(with_badword)
    ]
    stories = [
        p.strip()
        for p in (ROOT / "tests/fixtures/tinystories_valid_head_300k.txt").read_text(encoding="utf-8").split("\n\n")
        if len(p.split()) > 60
    ]
    rows += [{"source": "tinystories", "label": 0, "text": p} for p in stories[:40]]
    docs = [
        json.loads(x)["text"][:2000]
        for x in gzip.open(ROOT / "tests/fixtures/quality_hq.jsonl.gz", "rt", encoding="utf-8")
    ]
    english = [d for d in docs if "/en-US/" in d or "Python" in d][:40]
    rows += [{"source": "reference pages", "label": 0, "text": d} for d in english]
    return rows


def prf(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    tp = int((y & pred).sum())
    return tp / max(1, int(pred.sum())), tp / max(1, int(y.sum()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefs", default=str(ROOT.parent / "shared/data/prefs/hh_rlhf_harmless_base_test.jsonl"))
    a = ap.parse_args()
    rows = build(Path(a.prefs))
    out = ROOT / "benchmarks/data/toxicity_sample.jsonl"
    out.parent.mkdir(exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    from llmctl.data.steps.toxicity import toxicity_scores

    texts = [r["text"] for r in rows]
    t = time.perf_counter()
    toxicity_scores(texts[:1])  # loads scikit-learn and the model
    load = time.perf_counter() - t
    t = time.perf_counter()
    s = toxicity_scores(texts)
    secs = time.perf_counter() - t
    y = np.array([r["label"] == 1 for r in rows])
    print(
        f"sample: {len(rows)} texts, {int(y.sum())} offensive ({out.relative_to(ROOT)}); "
        f"model load {load:.1f} s, scoring {secs * 1000:.0f} ms"
    )
    print("| threshold | precision | recall | flagged |")
    print("|---|---|---|---|")
    for th in (0.5, 0.8, 0.9):
        p, r = prf(y, s >= th)
        print(f"| {th} | {p:.2f} | {r:.2f} | {int((s >= th).sum())} |")
    for src in dict.fromkeys(r["source"] for r in rows):
        idx = [i for i, r in enumerate(rows) if r["source"] == src]
        print(
            f"{src}: {len(idx)} texts, {int(y[idx].sum())} offensive, {int((s[idx] >= 0.8).sum())} flagged at 0.8, "
            f"max score of the clean ones {max([s[i] for i in idx if not y[i]], default=0):.2f}"
        )
    misses = [(float(s[i]), rows[i]["text"][:90]) for i in range(len(rows)) if y[i] and s[i] < 0.8]
    print("missed at 0.8:", *[f"  {sc:.2f} {t!r}" for sc, t in sorted(misses)[:8]], sep="\n")


if __name__ == "__main__":
    main()
