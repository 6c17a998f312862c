"""Helpers the command modules share: printing tables and configs, and the trainer commands' options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.table import Table

from llmctl import config as C  # called as C.load: `--help` swaps it to read the stage defaults
from llmctl.utils.formatting import format_value, human_bytes
from llmctl.utils.progress import make_console

out = make_console()


def print_funnel(rows: list[dict[str, Any]], title: str = "filter funnel") -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("step / reason")
    table.add_column("documents", justify="right")
    table.add_column("% of read", justify="right")
    table.add_column("bytes", justify="right")
    read = max(1, rows[0]["docs"])
    for r in rows:
        style = "bold" if r["row"] in ("read", "kept") else None
        table.add_row(
            r["row"], f"{r['docs']:,}", f"{100 * r['docs'] / read:.1f}%", human_bytes(r["bytes"]), style=style
        )
    out.print(table)


def print_results(rows: list[dict[str, Any]], title: str = "eval") -> None:
    """The eval results (one row per task and metric) as a rich table, like every stage's summary."""
    table = Table(title=title, title_justify="left")
    for col, just in (("task", "left"), ("metric", "left"), ("value", "right"), ("stderr", "right"), ("n", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        err = "" if r.get("stderr") is None else f"{r['stderr']:.4f}"
        table.add_row(r["task"], r["metric"], format_value(r["metric"], r["value"]), err, f"{r['n']:,}")
    out.print(table)


def print_config(cfg: Any) -> None:
    """Print a resolved stage config as YAML (what --config files look like)."""
    out.print(
        yaml.safe_dump(C.to_dict(cfg), sort_keys=False, allow_unicode=True), end="", markup=False, highlight=False
    )


# ----------------------------------------------------------------------------- trainer commands
# Options the trainer commands share (None = not given: the config file or the stage default decides).

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
        "--tp",
        help="Under torchrun: tensor-parallel degree N; ranks form a (world/N data x N tensor) mesh, FSDP2 over data.",
    ),
]
LoraROpt = Annotated[
    Optional[int],
    typer.Option(
        "--lora-r", help="LoRA rank: train low-rank adapters only (saved in PEFT's format); 0 = full fine-tuning."
    ),
]
LoraAlphaOpt = Annotated[
    Optional[float], typer.Option("--lora-alpha", help="LoRA scaling alpha (update x alpha/r; default 2r).")
]
LoraDropoutOpt = Annotated[Optional[float], typer.Option("--lora-dropout", help="Dropout on the LoRA adapters' input.")]
LoraTargetsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--lora-targets",
        help="Comma-separated layers to adapt (default q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).",
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Accepted for old scripts: re-running the same command resumes from the latest checkpoint anyway.",
    ),
]


OptimizerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--optimizer",
        help="adamw | muon (Muon on the hidden matrices, AdamW on the rest; default adamw).",
    ),
]
# The modern small-model recipe (pretrain; docs/pretrain.md)
RecipeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--recipe",
        help="modern: Muon plus the architecture switches measured to help on TinyStories (docs/pretrain.md); "
        "any option given explicitly wins.",
    ),
]
QkNormOpt = Annotated[
    Optional[bool], typer.Option("--qk-norm/--no-qk-norm", help="RMSNorm on queries and keys per head (Qwen3).")
]
MlpActOpt = Annotated[
    Optional[str], typer.Option("--mlp-act", help="swiglu | relu2 (non-gated relu(x)^2, d_ff 4 x d_model).")
]
ZeroInitOpt = Annotated[
    Optional[bool],
    typer.Option("--zero-init-proj/--no-zero-init-proj", help="Attention and MLP output projections start at zero."),
]
SoftcapOpt = Annotated[
    Optional[float], typer.Option("--logit-softcap", help="Logits = cap * tanh(logits / cap); 0 = off.")
]
TieOpt = Annotated[
    Optional[bool],
    typer.Option("--tie-embeddings/--untie-embeddings", help="Share the input embedding with the output head."),
]
EmbedLrOpt = Annotated[
    Optional[float], typer.Option("--embed-lr", help="The input embedding's own peak learning rate (default --lr).")
]
HeadLrOpt = Annotated[
    Optional[float], typer.Option("--head-lr", help="An untied output head's own peak learning rate (default --lr).")
]
LogToOpt = Annotated[
    Optional[str],
    typer.Option(
        "--log-to",
        help="Also log metrics, config and lineage to: tensorboard, wandb (offline unless WANDB_MODE says "
        "otherwise); comma-separated.",
    ),
]


def trainer_flags(
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
    optimizer=None,
    log_to=None,
    lora_r=None,
    lora_alpha=None,
    lora_dropout=None,
    lora_targets=None,
    **extra: Any,
) -> dict[str, Any]:
    """The shared options as `llmctl.config.load` flags (`train.*` keys), plus the command's own `extra`."""
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
        "train.optimizer": optimizer,
        "train.log_to": log_to,
        "train.lora.r": lora_r,
        "train.lora.alpha": lora_alpha,
        "train.lora.dropout": lora_dropout,
        "train.lora.targets": lora_targets,
        **extra,
    }


def run_trainer(
    cls: type,
    config: Any,
    set_: Any,
    flags: dict[str, Any],
    print_config_: bool,
    run: Callable[[Any], dict[str, Any]],
    keys: tuple[str, ...],
) -> None:
    """What every fine-tuning command does: resolve its config (defaults, --config, --set, flags), print it
    with --print-config, else run it (the process group shut down either way) and print the summary."""
    from llmctl.train import distributed as D  # torch: kept out of --help

    cfg = C.load(cls, config, set_, flags)
    if print_config_:
        return print_config(cfg)
    try:
        s = run(cfg)
    finally:
        D.shutdown()
    vals = ", ".join(f"{k} {s[k]:.4f}" for k in keys if k in s)
    D.print0(
        f"{run_state(s)}: loss {s.get('loss', float('nan')):.4f}{', ' + vals if vals else ''}; {s['seconds']:.1f} s; "
        f"checkpoint {s['checkpoint']}"
    )


def run_state(s: dict[str, Any]) -> str:
    """How a training call ended, from its summary: already complete, finished, or stopped at step N."""
    if s.get("complete"):
        return "already complete"
    if s["finished"]:
        return "finished"
    return f"stopped at step {s['steps_done']} (re-run the same command to continue)"
