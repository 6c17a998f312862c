"""Shared set-up for the rl tests: tiny checkpoint, prompts and reward functions a test names as MODULE:FUNC."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

from align_helpers import tiny_checkpoint, write_jsonl

from llmctl.train.loop import TrainConfig
from llmctl.train.rl.trainer import RLConfig


def digit_share(prompts, completions, **_):
    """A dense reward a random tiny model can learn to raise within a few steps: the share of digit characters."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def raise_on_seven(prompts, completions, answer, **_):
    """Raises on the prompt whose reference is 7 (so a test can check the error names its row index)."""
    if any(str(a).endswith(" 7") for a in answer):
        raise ValueError("cannot score this one")
    return [0.0] * len(completions)


def addition_rows(n: int = 6) -> list[dict]:
    return [{"prompt": f"What is {a} plus {b}?", "answer": f"#### {a + b}"} for a in range(n) for b in range(n)]


def setup(tmp: Path) -> tuple[Path, Path]:
    ck = tiny_checkpoint(tmp / "ck", max_seq_len=128)
    return ck, write_jsonl(tmp / "prompts.jsonl", addition_rows())


def config(algo: str = "grpo", steps: int = 4, **kw) -> RLConfig:
    train = dict(
        steps=steps,
        batch_size=8,
        micro_batch=4,
        lr=1e-3,
        warmup_steps=0,
        schedule="constant",
        eval_every=steps,
        ckpt_every=steps,
        weight_decay=0.0,
    )
    train.update(kw.pop("train", {}))
    base = dict(
        algo=algo,
        reward=["rl_helpers:digit_share"],
        rollout_prompts=4,
        num_generations=4,
        max_new_tokens=8,
        val_fraction=0.2,
        val_limit=8,
    )
    if algo == "ppo":
        base.update(rollout_prompts=8)
    return RLConfig(**{**base, **kw}, train=TrainConfig(**train))


def record_prompts(prompts, completions, **_):
    """digit_share, and each rank's prompts appended to $RL_PROMPT_LOG.RANK (the DDP test reads them)."""
    import json
    import os

    path = os.environ.get("RL_PROMPT_LOG")
    if path:
        with open(f"{path}.{os.environ.get('RANK', '0')}", "a") as f:
            f.write(json.dumps(list(prompts)) + "\n")
    return digit_share(prompts, completions)


def constant(prompts, completions, **_):
    """The same reward for every completion: GRPO gets no signal from it."""
    return [1.0] * len(completions)


def trl_grpo_self(**over):
    """A stand-in `self` for calling TRL GRPOTrainer's own methods (`_compute_loss`,
    `_get_per_token_logps_and_entropies`) on tensors: one process, no vLLM, token-level ratios,
    epsilon 0.2, beta 0, no entropy masking; `over` sets or adds attributes."""
    fake = SimpleNamespace(
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=0.0,
        loss_type="grpo",
        epsilon_low=0.2,
        epsilon_high=0.2,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=None,
        accelerator=SimpleNamespace(
            gather=lambda x: x,
            reduce=lambda x, reduction="sum": x,
            num_processes=1,
            autocast=contextlib.nullcontext,
            is_main_process=True,
        ),
        _metrics=defaultdict(lambda: defaultdict(list)),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
    )
    for k, v in over.items():
        setattr(fake, k, v)
    return fake
