"""Preference metrics with a reward model (from `llmctl reward`, `llmctl.train.reward`).

`prefs`: the reward model's accuracy on held-out preference pairs: the share of pairs where
r(prompt, chosen) > r(prompt, rejected) (a tie counts as wrong, as in `llmctl reward`'s own
held-out metric), plus the mean margin. Data: `prompt`/`chosen`/`rejected` rows (a dataset dir,
JSONL or Parquet) or raw HH-RLHF `chosen`/`rejected` transcripts (split at the last assistant
turn by `llmctl.data.chat_data`). `split=val` keeps the rows `llmctl reward` held out (their
`split` column, else the same seeded hash with the same `val_fraction` and `seed`); `split=all`
scores every pair (for a file the reward model never saw).

`winrate`: the evaluated model and a `baseline` model answer the same prompts (one user turn,
each through its own chat template, greedy by default); the reward model judges each pair:
win = 1 if r(model) > r(baseline), 0.5 on a tie, 0 otherwise. Reported: win rate with its
standard error, and the mean response length in words of each side, because reward models tend
to prefer longer answers (seed 001's length bias is then visible next to the win rate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.errors import UsageError
from llmctl.eval.mc import mean_stderr


@dataclass
class PrefsConfig:
    data: str = ""  # --prefs-data: prompt/chosen/rejected dataset or JSONL
    reward_model: str = ""  # default: the evaluated MODEL itself is the reward model
    split: str = "val"  # val | all
    val_fraction: float = 0.05
    seed: int = 0
    limit: int = 0


@dataclass
class WinrateConfig:
    prompts: str = ""  # --prompts: JSONL prompts (e.g. AlpacaEval)
    baseline: str = ""  # the other model (llmctl checkpoint or Hugging Face dir)
    reward_model: str = ""
    limit: int = 50
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0


def pref_rows(cfg: PrefsConfig) -> tuple[list[tuple[list[dict[str, str]], str, str]], dict[str, Any]]:
    from llmctl.data.chat_data import _pref_row, read_rows, split_of

    rows, lineage = read_rows(cfg.data)
    out = []
    for r in rows:
        pr, _ = _pref_row(r)
        if pr is None:
            continue
        key = (pr["prompt"], pr["chosen"], pr["rejected"])
        if cfg.split == "val" and split_of(r, key, cfg.val_fraction, cfg.seed) != "val":
            continue
        out.append(key)
        if cfg.limit and len(out) >= cfg.limit:
            break
    if cfg.split not in ("val", "all"):
        raise UsageError(f"prefs.split must be val or all, got {cfg.split!r}")
    if not out:
        raise UsageError(f"{cfg.data}: no preference pairs in split {cfg.split!r}")
    return out, lineage


def _rm(path: str, device: str = "cpu") -> Any:
    from llmctl.train.reward import load_reward_model

    if not path:
        raise UsageError("a reward model is needed: --set prefs.reward_model=DIR (or winrate.reward_model)")
    return load_reward_model(path, device=device)


def run_prefs(model_path: str, cfg: PrefsConfig, batch_size: int, progress: Any = None,
              device: str = "cpu") -> tuple[list[dict[str, Any]], list]:
    rm = _rm(cfg.reward_model or model_path, device)
    pairs, lineage = pref_rows(cfg)
    if progress:
        progress.start("prefs", len(pairs))
    prompts = [p for p, _, _ in pairs]
    rc = rm.score(prompts, [c for _, c, _ in pairs], batch_size)
    rr = rm.score(prompts, [r for _, _, r in pairs], batch_size)
    if progress:
        progress.advance(len(pairs))
    acc = [float(a > b) for a, b in zip(rc, rr)]
    margin = [a - b for a, b in zip(rc, rr)]
    n = len(pairs)
    return [{"task": "prefs", "metric": "accuracy", "value": sum(acc) / n, "stderr": mean_stderr(acc), "n": n},
            {"task": "prefs", "metric": "mean_margin", "value": sum(margin) / n, "stderr": mean_stderr(margin), "n": n},
            ], [lineage]


def read_prompts(path: str, limit: int) -> tuple[list[str], dict[str, Any]]:
    from llmctl.datasets import fingerprint_file

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: no such prompts file")
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            key = next((k for k in ("instruction", "prompt", "question") if k in rec), None)
            if key is None or not isinstance(rec[key], str):
                raise UsageError(f"{p}: rows need a string instruction, prompt or question")
            out.append(rec[key])
        if limit and len(out) >= limit:
            break
    return out, {"path": str(p.resolve()), "stage": "file", "fingerprint": fingerprint_file(p)}


def respond(lm: Any, prompts: list[str], cfg: WinrateConfig, progress: Any) -> list[str]:
    if lm.codec.chat is None:
        raise UsageError(f"{lm.name}: its tokenizer has no chat template; winrate needs chat models")
    out = []
    for i, p in enumerate(prompts):
        ids = lm.generate(lm.codec.chat([{"role": "user", "content": p}]), cfg.max_new_tokens,
                          temperature=cfg.temperature, seed=cfg.seed + i)
        out.append(lm.codec.decode(ids).strip())
        if progress:
            progress.advance(1, len(ids))
    return out


def run_winrate(lm: Any, cfg: WinrateConfig, batch_size: int, progress: Any = None,
                device: str = "cpu") -> tuple[list[dict[str, Any]], list]:
    from llmctl.eval.lm import load_lm

    if not cfg.baseline:
        raise UsageError("winrate needs a baseline model: --set winrate.baseline=DIR")
    rm = _rm(cfg.reward_model, device)
    prompts, lineage = read_prompts(cfg.prompts, cfg.limit)
    base = load_lm(cfg.baseline, device)
    if progress:
        progress.start("winrate", 2 * len(prompts))
    ours, theirs = respond(lm, prompts, cfg, progress), respond(base, prompts, cfg, progress)
    ra, rb = rm.score(prompts, ours, batch_size), rm.score(prompts, theirs, batch_size)
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ra, rb)]
    la, lb = [float(len(r.split())) for r in ours], [float(len(r.split())) for r in theirs]
    n = len(prompts)
    return [
        {"task": "winrate", "metric": "win_rate", "value": sum(wins) / n, "stderr": mean_stderr(wins), "n": n},
        {"task": "winrate", "metric": "mean_words_model", "value": sum(la) / n, "stderr": mean_stderr(la), "n": n},
        {"task": "winrate", "metric": "mean_words_baseline", "value": sum(lb) / n, "stderr": mean_stderr(lb), "n": n},
        {"task": "winrate", "metric": "mean_reward_model", "value": sum(ra) / n, "stderr": mean_stderr(ra), "n": n},
        {"task": "winrate", "metric": "mean_reward_baseline", "value": sum(rb) / n, "stderr": mean_stderr(rb), "n": n},
    ], [lineage, base.lineage()]
