"""Stop rate: whether the model ends its answers itself, within a token budget.

Each prompt (`instruction`/`prompt`/`question` of a JSONL row) is sent as one user turn through the
chat template (`format=chat`) or as plain text, and answered for at most `max_new_tokens` (greedy by
default, seed `seed + index` when sampled). An answer stops when the model emits a stop token
(<|eos|>, end of turn) within the budget. Metrics: `stop_rate`, the share of answers that stopped,
and `mean_new_tokens`, their length without the stop token; both with the standard error of the mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from llmctl.errors import UsageError
from llmctl.eval.base import Samples, mean_stderr, read_prompts
from llmctl.eval.lm import LM

TASK = "stop_rate"


@dataclass
class StopRateConfig:
    prompts: str = ""  # --prompts: JSONL (instruction, prompt or question)
    limit: int = 50
    format: str = "chat"  # chat (one user turn through the chat template) | plain
    max_new_tokens: int = 128  # must be below the model's context, so only a stop token ends an answer early
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0


def check(cfg: StopRateConfig) -> None:
    if cfg.format not in ("chat", "plain"):
        raise UsageError(f"stop_rate.format must be chat or plain, got {cfg.format!r}")
    if cfg.max_new_tokens < 1:
        raise UsageError("stop_rate.max_new_tokens must be >= 1")


SAMPLES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("output", pa.string()),
        ("new_tokens", pa.int64()),
        ("stopped", pa.bool_()),
    ]
)


def run(
    lm: LM, cfg: StopRateConfig, batch_size: int, progress: Any = None, *, model: str = "", device: str = "cpu"
) -> tuple[list[dict[str, Any]], list, Samples]:
    if cfg.max_new_tokens >= lm.max_len:
        raise UsageError(
            f"stop_rate.max_new_tokens ({cfg.max_new_tokens}) must be below {lm.name}'s context ({lm.max_len})"
        )
    if cfg.format == "chat" and lm.codec.chat is None:
        raise UsageError(f"{lm.name}: its tokenizer has no chat template; use stop_rate.format=plain")
    prompts, lineage = read_prompts(cfg.prompts, cfg.limit)
    if not prompts:
        raise UsageError(f"{cfg.prompts}: no prompts")
    if progress:
        progress.start(TASK, len(prompts))
    if cfg.format == "chat":
        ids = [lm.codec.chat([{"role": "user", "content": p}]) for p in prompts]
    else:
        ids = [lm.codec.encode(p) for p in prompts]
    outs = lm.generate_many(
        ids,
        cfg.max_new_tokens,
        temperature=cfg.temperature,
        seeds=[cfg.seed + i for i in range(len(prompts))],
        batch_size=batch_size,
        on_batch=(lambda n, t: progress.advance(n, t)) if progress else None,
    )
    # Prompts are cut to the context minus the budget, so an answer shorter than the budget ended on a stop token.
    stopped = [float(len(o) < cfg.max_new_tokens) for o in outs]
    lengths = [float(len(o)) for o in outs]
    samples = [
        {"id": str(i), "prompt": p, "output": lm.codec.decode(o), "new_tokens": len(o), "stopped": bool(s)}
        for i, (p, o, s) in enumerate(zip(prompts, outs, stopped))
    ]
    n = len(prompts)
    rows = [
        {"task": TASK, "metric": "stop_rate", "value": sum(stopped) / n, "stderr": mean_stderr(stopped), "n": n},
        {"task": TASK, "metric": "mean_new_tokens", "value": sum(lengths) / n, "stderr": mean_stderr(lengths), "n": n},
    ]
    return rows, [lineage], Samples(SAMPLES_SCHEMA, samples)
