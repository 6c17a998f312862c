"""Commands: llmctl sft, reward (train | score), dpo, data import. Registered on the shared app by importing this module."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl.cli.app import ConfigOpt, OverwriteOpt, PrintConfigOpt, SetOpt, app
from llmctl.cli.common import (
    CkptOpt,
    DataArg,
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
    MaxLenOpt,
    OptimizerOpt,
    OutOpt,
    ResumeOpt,
    SeedOpt,
    StepsOpt,
    StopOpt,
    TpOpt,
    ValOpt,
    WarmupOpt,
    run_trainer,
    trainer_flags,
)
from llmctl.cli.help import LlmctlGroup

# The pair trainers' (reward, dpo) and sft's batch sizes; the other options: llmctl.cli.common.
BatchOpt = Annotated[
    Optional[int],
    typer.Option(
        "--batch-size", help="Pairs per step over all ranks (a forward sees chosen and rejected: 2 rows a pair)."
    ),
]
MicroOpt = Annotated[Optional[int], typer.Option("--micro-batch", help="Pairs per forward per rank.")]
SftBatchOpt = Annotated[
    Optional[int],
    typer.Option(
        "--batch-size",
        help="Packed --max-len windows per step over all ranks, as TRL's batch size with packing (a window holds one or more examples; the run prints how many on average); with --no-pack, examples.",
    ),
]
SftMicroOpt = Annotated[
    Optional[int], typer.Option("--micro-batch", help="Packed windows (with --no-pack: examples) per forward per rank.")
]


@app.command("sft")
def sft_cmd(
    data: DataArg,
    from_: FromOpt,
    output: OutOpt,
    max_len: MaxLenOpt = None,
    val_fraction: ValOpt = None,
    no_pack: Annotated[
        bool, typer.Option("--no-pack", help="One example per row, right-padded, instead of packing.")
    ] = False,
    steps: StepsOpt = None,
    batch_size: SftBatchOpt = None,
    micro_batch: SftMicroOpt = None,
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
    tp: TpOpt = None,
    resume: ResumeOpt = False,
    optimizer: OptimizerOpt = None,
    log_to: LogToOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    print_config_: PrintConfigOpt = False,
) -> None:
    """Supervised fine-tuning on prompt/response (or messages) data; loss on assistant tokens only.

    Examples are packed into --max-len windows with block-diagonal attention; a held-out split gives val_loss.
    Runs alone or under torchrun; writes RUN/checkpoints/step_N that generate, eval and export take.
    """
    from llmctl.train.sft import SFTConfig, run_sft  # torch: kept out of --help

    run_trainer(
        SFTConfig,
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
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            lora_targets=lora_targets,
            tp=tp,
            optimizer=optimizer,
            log_to=log_to,
            max_len=max_len,
            val_fraction=val_fraction,
            pack=False if no_pack else None,
        ),
        print_config_,
        lambda cfg: run_sft(data, from_, output, cfg, resume=resume, overwrite=overwrite),
        ("val_loss",),
    )


# `llmctl reward PREFS ...` trains; `llmctl reward score RM DATA` scores. The group sends anything
# that is not a subcommand name to `train`.
class _DefaultTrain(LlmctlGroup):
    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["train", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx, formatter):  # both forms, the default one first
        formatter.write_usage(ctx.command_path, "PREFS --from CKPT -o RUN [OPTIONS]   (= reward train ...)")
        formatter.write_usage(ctx.command_path, "score RM DATA -o OUT [OPTIONS]", prefix="   or: ")


reward_app = typer.Typer(
    cls=_DefaultTrain,
    no_args_is_help=True,
    help="Train a reward model on preference pairs, or score data with one. "
    "`llmctl reward PREFS ...` is `llmctl reward train PREFS ...`; its options: "
    "`llmctl reward train --help`.",
)
app.add_typer(reward_app, name="reward")


@reward_app.command("train")
def reward_train_cmd(
    data: DataArg,
    from_: FromOpt,
    output: OutOpt,
    max_len: MaxLenOpt = None,
    val_fraction: ValOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    micro_batch: MicroOpt = None,
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
    tp: TpOpt = None,
    resume: ResumeOpt = False,
    optimizer: OptimizerOpt = None,
    log_to: LogToOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    print_config_: PrintConfigOpt = False,
) -> None:
    """Train a reward model (scalar head at the last token) with the Bradley-Terry loss on prompt/chosen/rejected.

    Logs held-out pairwise accuracy and margin (val_accuracy, val_margin in metrics.jsonl and the manifest).
    """
    from llmctl.train.reward import RewardConfig, run_reward  # torch: kept out of --help

    run_trainer(
        RewardConfig,
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
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            lora_targets=lora_targets,
            tp=tp,
            optimizer=optimizer,
            log_to=log_to,
            max_len=max_len,
            val_fraction=val_fraction,
        ),
        print_config_,
        lambda cfg: run_reward(data, from_, output, cfg, resume=resume, overwrite=overwrite),
        ("val_loss", "val_accuracy", "val_margin"),
    )


@reward_app.command("score")
def reward_score_cmd(
    rm: Annotated[str, typer.Argument(help="Reward model checkpoint or `llmctl reward` run dir.")],
    data: DataArg,
    output: Annotated[str, typer.Option("--output", "-o", help="Output dataset: DATA's columns + reward column(s).")],
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per forward.")] = 16,
    overwrite: OverwriteOpt = False,
) -> None:
    """Score prompt/response rows into a `reward` column (pairs: `reward_chosen`, `reward_rejected`)."""
    from llmctl.train.reward import score_dataset  # torch: kept out of --help

    m = score_dataset(rm, data, output, overwrite=overwrite, batch_size=batch_size)
    st = m["stats"]
    means = ", ".join(f"{k} {v:.4f}" for k, v in st.items() if k.startswith("mean_") or k == "accuracy")
    typer.echo(f"scored {st['rows']:,} rows ({means}) -> {output}")


@app.command("dpo")
def dpo_cmd(
    data: DataArg,
    from_: FromOpt,
    output: OutOpt,
    beta: Annotated[Optional[float], typer.Option(help="KL strength (default 0.1).")] = None,
    loss_type: Annotated[
        Optional[str], typer.Option("--loss-type", help="sigmoid | robust | ipo (default sigmoid).")
    ] = None,
    label_smoothing: Annotated[
        Optional[float], typer.Option("--label-smoothing", help="cDPO / robust DPO noise rate in [0, 0.5).")
    ] = None,
    ref: Annotated[Optional[str], typer.Option("--ref", help="Reference checkpoint (default: --from).")] = None,
    cache_ref: Annotated[
        bool, typer.Option("--cache-ref", help="Compute reference log-probs once, before training.")
    ] = False,
    max_len: MaxLenOpt = None,
    val_fraction: ValOpt = None,
    steps: StepsOpt = None,
    batch_size: BatchOpt = None,
    micro_batch: MicroOpt = None,
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
    tp: TpOpt = None,
    resume: ResumeOpt = False,
    optimizer: OptimizerOpt = None,
    log_to: LogToOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    print_config_: PrintConfigOpt = False,
) -> None:
    """Direct preference optimization against a frozen reference on prompt/chosen/rejected pairs.

    Logs TRL's metrics: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
    logps/rejected (m_* per step, val_* on the held-out pairs).
    """
    from llmctl.train.dpo import DPOConfig, run_dpo  # torch: kept out of --help

    run_trainer(
        DPOConfig,
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
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            lora_targets=lora_targets,
            tp=tp,
            optimizer=optimizer,
            log_to=log_to,
            beta=beta,
            loss_type=loss_type,
            label_smoothing=label_smoothing,
            ref=ref,
            cache_ref=cache_ref or None,
            max_len=max_len,
            val_fraction=val_fraction,
        ),
        print_config_,
        lambda cfg: run_dpo(data, from_, output, cfg, resume=resume, overwrite=overwrite),
        ("val_loss", "val_rewards/accuracies", "val_rewards/margins"),
    )


data_app = typer.Typer(cls=LlmctlGroup, help="Bring outside data into llmctl datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("import")
def data_import_cmd(
    src: Annotated[
        str, typer.Argument(help="A .jsonl or .parquet file (--format docs: also .txt, .gz, or a directory of them).")
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="Output dataset directory.")],
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="sft (prompt/response, question/answer, instruction/output, messages) | prefs (prompt/chosen/rejected, or HH-RLHF dialogues) | docs (documents for tokenize/mix: books, code, wiki dumps).",
        ),
    ],
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of rows in the val split, by content hash.")
    ] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the split hash.")] = 0,
    text_field: Annotated[
        str,
        typer.Option(
            "--text-field",
            help="docs: the text field/column (auto: text, else content); a comma list joins fields with a blank line.",
        ),
    ] = "auto",
    separator: Annotated[
        str,
        typer.Option(
            "--separator",
            help="docs, .txt files: auto (split on <|endoftext|> when present, else one document per file) | blank-line | any literal string.",
        ),
    ] = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert a JSONL/Parquet file into an `sft`, `prefs` or `docs` dataset with a manifest (lineage starts here)."""
    from llmctl.data.chat_data import import_data  # pyarrow: kept out of --help

    m = import_data(
        src,
        output,
        format_,
        val_fraction=val_fraction,
        seed=seed,
        overwrite=overwrite,
        doc_options={"text_field": text_field, "separator": separator},
    )
    st = m["stats"]
    skipped = ", ".join(f"{v} {k}" for k, v in st["skipped"].items()) or "none"
    what = "documents" if format_ == "docs" else f"rows ({st['val']:,} val)"
    typer.echo(f"imported {st['kept']:,} of {st['read']:,} {what}; skipped: {skipped} -> {output}")
