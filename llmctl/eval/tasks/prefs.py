"""Preference metrics: a reward model's, a policy's own (DPO's implicit reward), and win rate.

`prefs` on preference pairs: with a reward model (MODEL, or `reward_model`) `accuracy`
(r(chosen) > r(rejected); a tie is wrong) and `mean_margin`, each pair encoded as `llmctl reward`
trains on it; for a language model MODEL the metrics of `llmctl.eval.tasks.implicit`. `split=val`
keeps the pairs the trained model held out. `winrate`: MODEL and `baseline` answer the same prompts,
the reward model judges each pair (win 1, tie 0.5); also the mean words and rewards of each side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from safetensors import safe_open

from llmctl.data.chat_data import _pref_row, read_rows, split_of
from llmctl.errors import UsageError
from llmctl.eval.base import Samples, chat_answers, is_hf_dir, mean_stderr, model_lineage, read_prompts
from llmctl.eval.lm import LM, load_lm
from llmctl.eval.tasks.implicit import implicit_metrics
from llmctl.model.checkpoint import WEIGHTS, lora_of, resolve_checkpoint
from llmctl.model.reward import load_reward_model
from llmctl.store.dataset import MANIFEST


@dataclass
class PrefsConfig:
    data: str = ""  # --prefs-data: prompt/chosen/rejected dataset or JSONL
    reward_model: str = ""  # default: the evaluated MODEL itself is the reward model
    reference: str = ""  # implicit reward against this checkpoint (default: a DPO model's recorded reference)
    split: str = "val"  # val | all
    val_fraction: float | None = None  # rows without a split column: None = the trained model's split (else 0.05)
    seed: int | None = None  # likewise (else 0)
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


def training_split(path: str | Path) -> tuple[float, int] | None:
    """(val_fraction, seed) a `llmctl reward` / `dpo` / `sft` run split its data with, if `path` is one."""
    if not path or is_hf_dir(path):
        return None
    m = resolve_checkpoint(path) / MANIFEST
    cfg = json.loads(m.read_text()).get("config", {}) if m.is_file() else {}
    if "val_fraction" not in cfg or "seed" not in cfg.get("train", {}):
        return None
    return float(cfg["val_fraction"]), int(cfg["train"]["seed"])


def pref_rows(
    cfg: PrefsConfig, trained: tuple[float, int] | None = None
) -> tuple[list[tuple[list[dict[str, str]], str, str]], dict[str, Any]]:
    """The pairs to score; with split=val, rows without a split column are split by the same hash
    (val_fraction, seed) as the run that trained the model (`trained`), so held out means held out."""
    frac = cfg.val_fraction if cfg.val_fraction is not None else trained[0] if trained else 0.05
    seed = cfg.seed if cfg.seed is not None else trained[1] if trained else 0
    rows, lineage = read_rows(cfg.data)
    out = []
    for r in rows:
        pr, _ = _pref_row(r)
        if pr is None:
            continue
        key = (pr["prompt"], pr["chosen"], pr["rejected"])
        if cfg.split == "val" and split_of(r, key, frac, seed) != "val":
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
    if not path:
        raise UsageError("a reward model is needed: --set prefs.reward_model=DIR (or winrate.reward_model)")
    return load_reward_model(path, device=device)


def is_reward_model(path: str | Path) -> bool:
    """An llmctl checkpoint (or run dir) whose weights have a score head."""
    if is_hf_dir(path):
        return False
    ck = resolve_checkpoint(path)
    spec = lora_of(ck)
    if spec:  # a LoRA run: its score head is saved beside the adapters
        return "score_head" in (spec.get("heads") or [])
    with safe_open(str(ck / WEIGHTS), "pt") as f:
        return "score_head.weight" in f.keys()


PAIR_COLUMNS = (
    "reward_chosen",
    "reward_rejected",
    "logp_chosen",
    "logp_rejected",
    "ref_logp_chosen",
    "ref_logp_rejected",
    "implicit_reward_chosen",
    "implicit_reward_rejected",
)
SAMPLES_SCHEMA = pa.schema(
    [("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())]
    + [(c, pa.float64()) for c in PAIR_COLUMNS]
)


def run_prefs(
    lm: LM | None, cfg: PrefsConfig, batch_size: int, progress: Any = None, *, model: str = "", device: str = "cpu"
) -> tuple[list[dict[str, Any]], list, Samples]:
    """Metrics of MODEL (`model`) as a reward model and/or a policy; `lm` is MODEL if already loaded."""
    model_is_rm = is_reward_model(model)
    rm_path = cfg.reward_model or (model if model_is_rm else "")
    lm_metrics = not model_is_rm and not is_hf_dir(model)
    if not rm_path and not lm_metrics:
        raise UsageError(
            f"{model}: a Hugging Face model directory has no prefs metrics of its own; pass --reward-model"
        )
    pairs, lineage = pref_rows(cfg, training_split(model) or training_split(rm_path))
    if progress:
        progress.start("prefs", len(pairs))
    per_pair = [
        {
            "prompt": json.dumps(p, ensure_ascii=False) if not isinstance(p, str) else p,
            "chosen": c,
            "rejected": r,
            **dict.fromkeys(PAIR_COLUMNS),
        }
        for p, c, r in pairs
    ]
    rows: list[dict[str, Any]] = []
    lineages = [lineage]
    n = len(pairs)
    if rm_path:
        rm = _rm(rm_path, device)
        if rm_path != model:
            lineages.append(model_lineage(rm_path, "reward-model"))
        rc, rr = rm.score_pairs(
            [p for p, _, _ in pairs], [c for _, c, _ in pairs], [r for _, _, r in pairs], batch_size
        )
        acc = [float(a > b) for a, b in zip(rc, rr)]
        margin = [a - b for a, b in zip(rc, rr)]
        rows += [
            {"task": "prefs", "metric": "accuracy", "value": sum(acc) / n, "stderr": mean_stderr(acc), "n": n},
            {"task": "prefs", "metric": "mean_margin", "value": sum(margin) / n, "stderr": mean_stderr(margin), "n": n},
        ]
        for d, a, b in zip(per_pair, rc, rr):
            d.update(reward_chosen=a, reward_rejected=b)
    if lm_metrics:
        more, values, lin = implicit_metrics(model, pairs, cfg.reference, batch_size, device, policy=lm)
        rows += more
        lineages += lin
        for d, v in zip(per_pair, values):
            d.update(v)
    if progress:
        progress.advance(len(pairs))
    return rows, lineages, Samples(SAMPLES_SCHEMA, per_pair)


def respond(lm: Any, prompts: list[str], cfg: WinrateConfig, progress: Any, batch_size: int = 1) -> list[str]:
    return chat_answers(
        lm,
        prompts,
        task="winrate",
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
        batch_size=batch_size,
        progress=progress,
    )


def run_winrate(
    lm: LM, cfg: WinrateConfig, batch_size: int, progress: Any = None, *, model: str = "", device: str = "cpu"
) -> tuple[list[dict[str, Any]], list]:
    if not cfg.baseline:
        raise UsageError("winrate needs a baseline model: --set winrate.baseline=DIR")
    rm = _rm(cfg.reward_model, device)
    prompts, lineage = read_prompts(cfg.prompts, cfg.limit)
    base = load_lm(cfg.baseline, device)
    if progress:
        progress.start("winrate", 2 * len(prompts))
    ours, theirs = respond(lm, prompts, cfg, progress, batch_size), respond(base, prompts, cfg, progress, batch_size)
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
