"""Command: llmctl rl (PPO against a reward model, GRPO with verifiable rewards). Registered by importing this module."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl.cli.app import ConfigOpt, OverwriteOpt, PrintConfigOpt, SetOpt, app
from llmctl.cli.common import (
    CkptOpt,
    DeviceOpt,
    DtypeOpt,
    EvalOpt,
    FromOpt,
    LogToOpt,
    LoraAlphaOpt,
    LoraDropoutOpt,
    LoraROpt,
    LoraTargetsOpt,
    LrOpt,
    OptimizerOpt,
    OutOpt,
    ResumeOpt,
    SeedOpt,
    StepsOpt,
    StopOpt,
    ValOpt,
    WarmupOpt,
    run_trainer,
    trainer_flags,
)

PromptsArg = Annotated[
    str,
    typer.Argument(
        help="Prompts: dataset dir, .parquet or .jsonl with a `prompt` (or `messages`, GSM8K's `question`, AlpacaEval's `instruction`) column; other columns (e.g. `answer`) go to the reward functions."
    ),
]
_RL = "RL"


@app.command("rl")
def rl_cmd(
    prompts: PromptsArg,
    from_: FromOpt,
    output: OutOpt,
    algo: Annotated[
        Optional[str],
        typer.Option(
            help="grpo (G completions per prompt, group-normalised advantages) | ppo (value head, GAE, KL penalty to --from).",
            rich_help_panel=_RL,
        ),
    ] = None,
    reward: Annotated[
        Optional[list[str]],
        typer.Option(
            "--reward",
            help="Reward (repeatable): rm | exact_match (GSM8K final number, eval's extraction) | format ('#### N' answer line) | length (minus the words: a length penalty) | MODULE:FUNC.",
            rich_help_panel=_RL,
        ),
    ] = None,
    reward_weight: Annotated[
        Optional[list[float]],
        typer.Option(
            "--reward-weight", help="Weight of each --reward, in order (default 1 each).", rich_help_panel=_RL
        ),
    ] = None,
    reward_model: Annotated[
        Optional[str],
        typer.Option(
            "--reward-model",
            help="`llmctl reward` run or checkpoint, for --reward rm (same tokenizer as --from).",
            rich_help_panel=_RL,
        ),
    ] = None,
    num_generations: Annotated[
        Optional[int],
        typer.Option(
            "--num-generations", "-G", help="Completions per prompt (GRPO; 2 or more; default 4).", rich_help_panel=_RL
        ),
    ] = None,
    rollout_prompts: Annotated[
        Optional[int],
        typer.Option("--rollout-prompts", help="Prompts per rollout over all ranks (default 8).", rich_help_panel=_RL),
    ] = None,
    epochs: Annotated[
        Optional[int],
        typer.Option(
            "--epochs", help="Optimisation passes over each rollout (default: GRPO 1, PPO 4).", rich_help_panel=_RL
        ),
    ] = None,
    max_new_tokens: Annotated[
        Optional[int], typer.Option("--max-new-tokens", help="Longest completion (default 64).", rich_help_panel=_RL)
    ] = None,
    max_prompt_len: Annotated[
        Optional[int],
        typer.Option(
            "--max-prompt-len",
            help="Prompts longer than this keep their last N tokens (default 256; prompt + completion must fit the model's context).",
            rich_help_panel=_RL,
        ),
    ] = None,
    temperature: Annotated[
        Optional[float], typer.Option(help="Sampling temperature of rollouts (default 1.0).", rich_help_panel=_RL)
    ] = None,
    top_k: Annotated[
        Optional[int],
        typer.Option("--top-k", help="Sample among the k likeliest tokens (0 = off).", rich_help_panel=_RL),
    ] = None,
    top_p: Annotated[
        Optional[float], typer.Option("--top-p", help="Nucleus sampling mass (1 = off).", rich_help_panel=_RL)
    ] = None,
    beta: Annotated[
        Optional[float],
        typer.Option(
            help="KL coefficient to the --from model (default: GRPO 0.04, PPO 0.05; GRPO with 0 keeps no reference).",
            rich_help_panel=_RL,
        ),
    ] = None,
    target_kl: Annotated[
        Optional[float],
        typer.Option(
            "--target-kl",
            help="PPO: adapt beta toward this KL per completion (Ziegler et al.); default fixed beta.",
            rich_help_panel=_RL,
        ),
    ] = None,
    loss_type: Annotated[
        Optional[str],
        typer.Option(
            "--loss-type",
            help="GRPO aggregation: grpo | bnpo | dr_grpo | dapo (token-level over the optimizer step, TRL's default) (default grpo).",
            rich_help_panel=_RL,
        ),
    ] = None,
    no_scale_rewards: Annotated[
        bool,
        typer.Option(
            "--no-scale-rewards",
            help="GRPO: do not divide advantages by the group's std (Dr. GRPO).",
            rich_help_panel=_RL,
        ),
    ] = False,
    importance_sampling: Annotated[
        Optional[str],
        typer.Option(
            "--importance-sampling",
            help="GRPO importance weights: token | sequence (GSPO: one length-normalised ratio per completion; default token).",
            rich_help_panel=_RL,
        ),
    ] = None,
    epsilon_high: Annotated[
        Optional[float],
        typer.Option(
            "--epsilon-high",
            help="GRPO: clip the ratio at 1 + this above (DAPO's clip-higher, e.g. 0.28); default the lower 0.2.",
            rich_help_panel=_RL,
        ),
    ] = None,
    mask_truncated: Annotated[
        bool,
        typer.Option(
            "--mask-truncated",
            help="GRPO: completions that hit --max-new-tokens without a stop token get no loss.",
            rich_help_panel=_RL,
        ),
    ] = False,
    overlong_penalty: Annotated[
        Optional[int],
        typer.Option(
            "--overlong-penalty",
            help="DAPO's soft overlong punishment: a reward falling from 0 to -1 over the last N tokens before --max-new-tokens.",
            rich_help_panel=_RL,
        ),
    ] = None,
    dynamic_sampling: Annotated[
        bool,
        typer.Option(
            "--dynamic-sampling",
            help="GRPO: drop groups whose rewards are all equal and draw more prompts (up to --set max_draws=4 draws a rollout).",
            rich_help_panel=_RL,
        ),
    ] = False,
    skip_flat_groups: Annotated[
        bool,
        typer.Option(
            "--skip-flat-groups",
            help="GRPO with --beta 0: completions whose group's rewards are all equal (advantage 0, so no gradient) "
            "skip the training forward and backward: the same update for less compute; entropy is then logged over "
            "the trained completions.",
            rich_help_panel=_RL,
        ),
    ] = False,
    tool: Annotated[
        Optional[list[str]],
        typer.Option(
            "--tool",
            help="Tool the policy may call with the tokenizer's tool-call markers (repeatable; docs/rl.md): calculator (arithmetic only) | MODULE:FUNC (a subprocess per call).",
            rich_help_panel=_RL,
        ),
    ] = None,
    max_tool_calls: Annotated[
        Optional[int],
        typer.Option("--max-tool-calls", help="Tool calls per completion (default 4).", rich_help_panel=_RL),
    ] = None,
    val_fraction: ValOpt = None,
    steps: StepsOpt = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size", help="Completions per optimizer step over all ranks (a rollout holds rollout_prompts x G)."
        ),
    ] = None,
    micro_batch: Annotated[
        Optional[int], typer.Option("--micro-batch", help="Completions per forward per rank.")
    ] = None,
    lr: LrOpt = None,
    warmup: WarmupOpt = None,
    eval_every: EvalOpt = None,
    ckpt_every: CkptOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    stop_after: StopOpt = None,
    lora_r: LoraROpt = None,
    lora_alpha: LoraAlphaOpt = None,
    lora_dropout: LoraDropoutOpt = None,
    lora_targets: LoraTargetsOpt = None,
    resume: ResumeOpt = False,
    optimizer: OptimizerOpt = None,
    log_to: LogToOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    print_config_: PrintConfigOpt = False,
) -> None:
    """Reinforcement learning from a (SFT) checkpoint: PPO against a reward model, or GRPO with verifiable rewards.

    Each rollout samples completions with the policy (batched, KV cache), scores them, then trains --epochs
    passes of mini-batches; the KL to --from is penalised. metrics.jsonl uses TRL's names (reward, reward_std,
    kl, clip_ratio; objective/kl, objective/scores, policy/approxkl, policy/clipfrac, val/...); val_reward is the
    mean reward of greedy answers to held-out prompts (sampled ones with --set val_temperature=T --set
    val_samples=K), and RUN/samples.jsonl holds sampled completions with their rewards.
    """
    from llmctl.train.rl.trainer import RLConfig, run_rl  # torch: kept out of --help

    extra = dict(
        algo=algo,
        reward=reward or None,
        reward_weights=reward_weight or None,
        reward_model=reward_model,
        num_generations=num_generations,
        rollout_prompts=rollout_prompts,
        epochs=epochs,
        max_new_tokens=max_new_tokens,
        max_prompt_len=max_prompt_len,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        beta=beta,
        target_kl=target_kl,
        loss_type=loss_type,
        scale_rewards=False if no_scale_rewards else None,
        importance_sampling=importance_sampling,
        epsilon_high=epsilon_high,
        mask_truncated=True if mask_truncated else None,
        overlong_penalty=overlong_penalty,
        dynamic_sampling=True if dynamic_sampling else None,
        skip_flat_groups=True if skip_flat_groups else None,
        tools=tool or None,
        max_tool_calls=max_tool_calls,
        val_fraction=val_fraction,
    )
    run_trainer(
        RLConfig,
        config,
        set_,
        trainer_flags(
            steps,
            batch_size,
            micro_batch,
            lr,
            warmup,
            eval_every,
            ckpt_every,
            seed,
            device,
            dtype,
            stop_after,
            optimizer=optimizer,
            log_to=log_to,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            lora_targets=lora_targets,
            **extra,
        ),
        print_config_,
        lambda cfg: run_rl(prompts, from_, output, cfg, resume=resume, overwrite=overwrite),
        ("val_reward", "val_reward_se"),
    )
