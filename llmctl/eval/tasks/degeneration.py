"""Text degeneration on sampled continuations (Holtzman et al. 2020): how repetitive and how varied
the model's own text is for a sampling setting.

Prompts: a JSONL file's `instruction`/`prompt`/`question`, or the first `prompt_words` words of a
dataset's documents; each is continued with seed `seed + index`. Metrics on whitespace words:
`repetition_{n}` (share of a continuation's n-grams seen earlier in it, averaged), `distinct_1`,
`distinct_2` (distinct / total n-grams over all continuations, Li et al. 2016), `mean_words`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.errors import UsageError
from llmctl.eval.base import file_lineage, mean_stderr
from llmctl.eval.lm import LM
from llmctl.store.dataset import Dataset

TASK = "degeneration"


@dataclass
class DegenerationConfig:
    prompts: str = ""  # --prompts: JSONL file (e.g. AlpacaEval prompts) or a dataset with `text`
    limit: int = 50
    prompt_words: int = 32  # for documents: the prompt is this many leading words
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    ngram: int = 4


def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def repetition_rate(words: list[str], n: int) -> float:
    """Share of n-grams that repeat an earlier n-gram of the same text (0 when there are none)."""
    grams = ngrams(words, n)
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    rep = 0
    for g in grams:
        rep += g in seen
        seen.add(g)
    return rep / len(grams)


def distinct(texts: list[list[str]], n: int) -> float:
    grams = [g for w in texts for g in ngrams(w, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def read_prompts(path: str, limit: int, prompt_words: int) -> tuple[list[str], dict[str, Any]]:
    p = Path(path)
    if p.is_file():
        out = []
        for line in p.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            key = next((k for k in ("instruction", "prompt", "question", "text") if k in rec), None)
            if key is None:
                raise UsageError(f"{p}: JSONL rows need an instruction, prompt, question or text field")
            out.append(str(rec[key]))
            if limit and len(out) >= limit:
                break
        return out, file_lineage(p)
    ds = Dataset.open(p, columns=["text"])
    out = []
    for row in ds.iter_rows(["text"]):
        words = (row["text"] or "").split()
        if len(words) > prompt_words:
            out.append(" ".join(words[:prompt_words]))
        if limit and len(out) >= limit:
            break
    return out, ds.lineage()


def run(
    lm: LM, cfg: DegenerationConfig, batch_size: int, progress: Any = None, *, model: str = "", device: str = "cpu"
) -> tuple[list[dict[str, Any]], list]:
    prompts, lineage = read_prompts(cfg.prompts, cfg.limit, cfg.prompt_words)
    if not prompts:
        raise UsageError(f"{cfg.prompts}: no prompts")
    if progress:
        progress.start(TASK, len(prompts))
    outs = lm.generate_many(
        [lm.codec.encode(p) for p in prompts],
        cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        seeds=[cfg.seed + i for i in range(len(prompts))],
        batch_size=batch_size,
        on_batch=(lambda n, t: progress.advance(n, t)) if progress else None,
    )
    conts: list[list[str]] = [lm.codec.decode(ids).split() for ids in outs]
    n = len(conts)
    reps = [repetition_rate(w, cfg.ngram) for w in conts]
    lens = [float(len(w)) for w in conts]
    return [
        {
            "task": TASK,
            "metric": f"repetition_{cfg.ngram}",
            "value": sum(reps) / n,
            "stderr": mean_stderr(reps),
            "n": n,
        },
        {"task": TASK, "metric": "distinct_1", "value": distinct(conts, 1), "stderr": None, "n": n},
        {"task": TASK, "metric": "distinct_2", "value": distinct(conts, 2), "stderr": None, "n": n},
        {"task": TASK, "metric": "mean_words", "value": sum(lens) / n, "stderr": mean_stderr(lens), "n": n},
    ], [lineage]
