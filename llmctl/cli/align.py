"""Commands: llmctl sft, reward (train | score), dpo, data import (issue 6). Registered on the shared app by importing this module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from llmctl.cli.app import ConfigOpt, OverwriteOpt, PrintConfigOpt, SetOpt, app
from llmctl.cli.common import print_config
from llmctl.cli.help import LlmctlGroup

# Options every alignment trainer shares (None = not given: the config file or default decides).
DataArg = Annotated[str, typer.Argument(help="Dataset dir, .parquet or .jsonl file.")]
FromOpt = Annotated[str, typer.Option("--from", help="Checkpoint (or run dir) to start from.")]
OutOpt = Annotated[
    str, typer.Option("--output", "-o", help="Run directory: metrics.jsonl, checkpoints/, _manifest.json.")
]
MaxLenOpt = Annotated[
    Optional[int],
    typer.Option("--max-len", help="Most tokens per example (longer: prompt cut left, response right; counted)."),
]
ValOpt = Annotated[
    Optional[float], typer.Option("--val-fraction", help="Held-out share when the data has no split column.")
]
StepsOpt = Annotated[Optional[int], typer.Option(help="Optimizer steps.")]
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
LrOpt = Annotated[Optional[float], typer.Option(help="Peak learning rate.")]
WarmupOpt = Annotated[Optional[int], typer.Option("--warmup", help="Linear warmup steps.")]
EvalOpt = Annotated[Optional[int], typer.Option("--eval-every", help="Held-out metrics every N steps.")]
CkptOpt = Annotated[Optional[int], typer.Option("--ckpt-every", help="Checkpoint every N steps.")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Seed of the data order and split.")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="auto | cpu | cuda.")]
DtypeOpt = Annotated[Optional[str], typer.Option(help="auto (bf16 autocast on GPU) | fp32 | bf16.")]
StopOpt = Annotated[
    Optional[int],
    typer.Option("--stop-after", help="Stop after N steps in this invocation (re-run the same command to continue)."),
]
TpOpt = Annotated[
    Optional[int],
    typer.Option(
        "--tp", help="Under torchrun: tensor-parallel degree N (a world/N data x N tensor mesh, FSDP2 over data)."
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Accepted for old scripts: re-running the same command resumes from the latest checkpoint anyway.",
    ),
]


def _flags(
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
    tp=None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "train.steps": steps,
        "train.batch_size": batch_size,
        "train.micro_batch": micro_batch,
        "train.lr": lr,
        "train.warmup_steps": warmup,
        "train.eval_every": eval_every,
        "train.ckpt_every": ckpt_every,
        "train.seed": seed,
        "train.device": device,
        "train.dtype": dtype,
        "train.stop_after": stop_after,
        "train.tp": tp,
        **extra,
    }


def _train(
    cls: type,
    config: Any,
    set_: Any,
    flags: dict[str, Any],
    print_config_: bool,
    run: Callable[[Any], dict[str, Any]],
    keys: tuple[str, ...],
) -> None:
    """What every trainer command does: resolve its config (defaults, --config, --set, flags), print it
    with --print-config, else run it (the process group shut down either way) and print the summary."""
    from llmctl import config as C
    from llmctl.train import distributed as D

    cfg = C.load(cls, config, set_, flags)
    if print_config_:
        return print_config(cfg)
    try:
        s = run(cfg)
    finally:
        D.shutdown()
    _done(s, keys)


def _done(s: dict[str, Any], keys: tuple[str, ...]) -> None:
    from llmctl.train import distributed as D

    state = (
        "already complete"
        if s.get("complete")
        else "finished"
        if s["finished"]
        else f"stopped at step {s['steps_done']} (re-run the same command to continue)"
    )
    vals = ", ".join(f"{k} {s[k]:.4f}" for k in keys if k in s)
    D.print0(
        f"{state}: loss {s.get('loss', float('nan')):.4f}{', ' + vals if vals else ''}; {s['seconds']:.1f} s; "
        f"checkpoint {s['checkpoint']}"
    )


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
    tp: TpOpt = None,
    resume: ResumeOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    print_config_: PrintConfigOpt = False,
) -> None:
    """Supervised fine-tuning on prompt/response (or messages) data; loss on assistant tokens only.

    Examples are packed into --max-len windows with block-diagonal attention; a held-out split gives val_loss.
    Runs alone or under torchrun; writes RUN/checkpoints/step_N that generate, eval and export take.
    """
    from llmctl.train.sft import SFTConfig, run_sft

    _train(
        SFTConfig,
        config,
        set_,
        _flags(
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
            tp=tp,
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
    tp: TpOpt = None,
    resume: ResumeOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    print_config_: PrintConfigOpt = False,
) -> None:
    """Train a reward model (scalar head at the last token) with the Bradley-Terry loss on prompt/chosen/rejected.

    Logs held-out pairwise accuracy and margin (val_accuracy, val_margin in metrics.jsonl and the manifest).
    """
    from llmctl.train.reward import RewardConfig, run_reward

    _train(
        RewardConfig,
        config,
        set_,
        _flags(
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
            tp=tp,
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
    from llmctl.train.reward import score_dataset

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
    tp: TpOpt = None,
    resume: ResumeOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    print_config_: PrintConfigOpt = False,
) -> None:
    """Direct preference optimization against a frozen reference on prompt/chosen/rejected pairs.

    Logs TRL's metrics: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
    logps/rejected (m_* per step, val_* on the held-out pairs).
    """
    from llmctl.train.dpo import DPOConfig, run_dpo

    _train(
        DPOConfig,
        config,
        set_,
        _flags(
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
            tp=tp,
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
    from llmctl.data.chat_data import import_data

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
