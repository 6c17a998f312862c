"""Rebuild the bundled example data from ../shared/data (run from the repository root).

Everything here is a small slice of real data nobody on the team wrote (sources and licenses in
examples/README.md). Deterministic: the same slices every time.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
EX = Path(__file__).resolve().parent


def tinystories() -> None:
    """TinyStories paragraphs grouped into ~1,500-character documents, as JSONL."""
    paras = [
        p.strip()
        for p in (SHARED / "tinystories" / "tinystories_valid_head.txt").read_text().split("\n\n")
        if p.strip()
    ]
    docs, cur = [], []
    for p in paras:
        cur.append(p)
        if sum(len(c) for c in cur) >= 1500:
            docs.append("\n\n".join(cur))
            cur = []
    if cur:
        docs.append("\n\n".join(cur))
    (EX / "text").mkdir(exist_ok=True)
    body = "".join(
        json.dumps({"id": f"tinystories-{i:05d}", "text": d, "source": "tinystories-valid"}) + "\n"
        for i, d in enumerate(docs)
    )
    (EX / "text" / "tinystories.jsonl.gz").write_bytes(gzip.compress(body.encode("utf-8"), compresslevel=9, mtime=0))


def gsm8k(n_train: int = 1000, n_test: int = 50) -> None:
    (EX / "sft").mkdir(exist_ok=True)
    (EX / "eval").mkdir(exist_ok=True)
    with open(SHARED / "sft" / "gsm8k_train.jsonl") as f, open(EX / "sft" / "gsm8k_train.jsonl", "w") as out:
        for i, line in zip(range(n_train), f):
            row = json.loads(line)
            out.write(json.dumps({"prompt": row["question"], "response": row["answer"]}) + "\n")
    with open(SHARED / "sft" / "gsm8k_test.jsonl") as f, open(EX / "eval" / "gsm8k_test.jsonl", "w") as out:
        for i, line in zip(range(n_test), f):
            out.write(line)


def arithmetic(n: int = 20, n_test: int = 150, seed: int = 0) -> None:
    """Two-number additions "What is A plus B?" -> "#### A+B" (A, B < n), the task of benchmarks/rl.py:
    a seeded shuffle holds `n_test` out (eval/arithmetic_test.jsonl), the rest is sft/arithmetic_train.jsonl.
    GSM8K's layout (question, answer), so `data import --format sft`, `rl --reward exact_match` and
    `eval --task exact_match` read them as they are."""
    rows = [{"question": f"What is {a} plus {b}?", "answer": f"#### {a + b}"} for a in range(n) for b in range(n)]
    random.Random(seed).shuffle(rows)
    for path, part in (
        (EX / "eval" / "arithmetic_test.jsonl", rows[:n_test]),
        (EX / "sft" / "arithmetic_train.jsonl", rows[n_test:]),
    ):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))


def alpaca_prompts(n: int = 40) -> None:
    with (
        open(SHARED / "sft" / "alpaca_eval_prompts.jsonl") as f,
        open(EX / "eval" / "alpaca_eval_prompts.jsonl", "w") as out,
    ):
        for i, line in zip(range(n), f):
            out.write(line)


def prefs(min_ratio: float = 2.0) -> None:
    """HH-RLHF harmless-base pairs whose two replies differ in length by `min_ratio`x or more (characters).

    1,240 of the 2,303 usable pairs. On all pairs the toy pipeline's 1M-parameter models learn too little to
    show on held-out pairs (its reward model: 0.547 held-out accuracy); where the replies differ this much,
    the shorter one (a refusal, mostly) is the chosen one 61% of the time (55% over all pairs), and both the
    reward model and DPO measurably learn (docs/align.md, benchmarks/prefs_learning.py). The raw dialogues,
    in file order, as `data import --format prefs` reads them.
    """
    import sys

    sys.path.insert(0, str(EX.parent))
    from llmctl.data.chat_data import _pref_row

    (EX / "prefs").mkdir(exist_ok=True)
    with (
        open(SHARED / "prefs" / "hh_rlhf_harmless_base_test.jsonl") as f,
        open(EX / "prefs" / "hh_rlhf_harmless_base.jsonl", "w") as out,
    ):
        for line in f:
            p, _ = _pref_row(json.loads(line))
            if p and max(len(p["chosen"]), len(p["rejected"])) >= min_ratio * max(
                1, min(len(p["chosen"]), len(p["rejected"]))
            ):
                out.write(line)


def ppo_sft() -> None:
    """The chosen replies of the HH-RLHF harmless-base pairs that examples/prefs leaves out, as SFT dialogues
    (`messages`, the shared turns then the chosen reply), for pipelines/ppo.yaml's SFT stage: a policy whose
    answers are replies of the kind the reward model was trained on. A dialogue whose first Human turn is
    also one of examples/prefs' is left out, so PPO's held-out prompts are not trained on here either."""
    import sys

    sys.path.insert(0, str(EX.parent))
    from llmctl.data.chat_data import _pref_row

    used = set((EX / "prefs" / "hh_rlhf_harmless_base.jsonl").read_text().splitlines(keepends=True))
    firsts = set()
    for line in used:
        p, _ = _pref_row(json.loads(line))
        if p:
            firsts.add(p["prompt"][0]["content"].strip().lower())
    with (
        open(SHARED / "prefs" / "hh_rlhf_harmless_base_test.jsonl") as f,
        open(EX / "prefs" / "hh_rlhf_harmless_base_sft.jsonl", "w") as out,
    ):
        for line in f:
            p, _ = _pref_row(json.loads(line)) if line not in used else (None, None)
            if p and p["prompt"][0]["content"].strip().lower() not in firsts:
                out.write(
                    json.dumps({"messages": p["prompt"] + [{"role": "assistant", "content": p["chosen"]}]}) + "\n"
                )


def mmlu(subjects=("high_school_geography", "marketing", "world_religions")) -> None:
    d = EX / "eval" / "mmlu"
    d.mkdir(parents=True, exist_ok=True)
    for s in subjects:
        shutil.copy(SHARED / "eval" / "mmlu" / "dev" / f"{s}_dev.csv", d / f"{s}_dev.csv")
        shutil.copy(SHARED / "eval" / "mmlu" / "val" / f"{s}_val.csv", d / f"{s}_val.csv")


if __name__ == "__main__":
    tinystories()
    gsm8k()
    arithmetic()
    alpaca_prompts()
    prefs()
    ppo_sft()
    mmlu()
