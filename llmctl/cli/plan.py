"""Command: llmctl plan. Registered on the shared app by importing this module."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from llmctl.cli.app import app
from llmctl.cli.common import LoraTargetsOpt, out
from llmctl.errors import UsageError

if TYPE_CHECKING:
    from llmctl.model.transformer import ModelConfig


def _ints(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected integers separated by commas, e.g. 1,8") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag} {text!r}: expected positive integers separated by commas")
    return values


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def _model_config(source: str, vocab_size: int | None) -> ModelConfig:
    """The ModelConfig of an llmctl checkpoint or run dir, or of a local Hugging Face model directory."""
    from llmctl.model.checkpoint import read_model_config, resolve_checkpoint  # torch: kept out of --help
    from llmctl.model.hf_import import hf_model_config, is_hf_dir  # torch: kept out of --help

    if is_hf_dir(source):
        cfg = hf_model_config(source)
    else:
        try:
            cfg = read_model_config(resolve_checkpoint(source))
        except UsageError:
            raise UsageError(
                f"--from {source}: not an llmctl checkpoint or run directory, nor a Hugging Face model directory"
            ) from None
    if vocab_size is not None:
        cfg.vocab_size = vocab_size
    return cfg


@app.command("plan")
def plan_cmd(
    preset: Annotated[str, typer.Option(help="Model shape (the presets of `llmctl pretrain`).")] = "124m",
    source: Annotated[
        Optional[str],
        typer.Option(
            "--from", help="Plan this model instead of a preset: an llmctl checkpoint/run dir or a local HF model dir."
        ),
    ] = None,
    n_layer: Annotated[Optional[int], typer.Option(help="Override the preset's layer count.")] = None,
    n_head: Annotated[Optional[int], typer.Option(help="Override the preset's attention heads.")] = None,
    n_kv_head: Annotated[Optional[int], typer.Option(help="Key/value heads (< n_head: grouped-query).")] = None,
    d_model: Annotated[Optional[int], typer.Option(help="Override the preset's model width.")] = None,
    d_ff: Annotated[Optional[int], typer.Option(help="Override the preset's MLP width.")] = None,
    vocab_size: Annotated[
        Optional[int], typer.Option(help="Vocabulary size (the tokenizer's; default 50304, or --from's).")
    ] = None,
    seq_len: Annotated[int, typer.Option(help="Tokens per training window.")] = 1024,
    batch_tokens: Annotated[int, typer.Option(help="Tokens per optimizer step over all ranks.")] = 524288,
    micro_batch: Annotated[int, typer.Option(help="Sequences per forward/backward per rank.")] = 1,
    dp: Annotated[str, typer.Option("--dp", help="Data-parallel degrees to compare, e.g. 1,8,64.")] = "1",
    tp: Annotated[str, typer.Option("--tp", help="Tensor-parallel degrees to compare, e.g. 1,8.")] = "1",
    fsdp: Annotated[bool, typer.Option("--fsdp", help="Shard over dp with FSDP2 (else DDP when tp is 1).")] = False,
    act_ckpt: Annotated[
        bool, typer.Option("--activation-checkpointing", help="Recompute block activations in backward.")
    ] = False,
    dtype: Annotated[str, typer.Option(help="bf16 (autocast, fp32 master weights) | fp32.")] = "bf16",
    gpu: Annotated[
        Optional[list[str]],
        typer.Option("--gpu", help="Target GPU, repeatable (h100 when none is given); see --gpu-file."),
    ] = None,
    gpu_file: Annotated[
        Optional[str],
        typer.Option(help="YAML or JSON file adding GPUs to the table: name: memory_gib, bf16_tflops (docs/plan.md)."),
    ] = None,
    mfu: Annotated[float, typer.Option(help="Assumed model FLOPs utilisation for the time estimates.")] = 0.4,
    lora_r: Annotated[int, typer.Option(help="Plan a LoRA fine-tune of this rank (0: full training).")] = 0,
    lora_targets: LoraTargetsOpt = None,
) -> None:
    """Per-rank memory, FLOPs and step time of training a model on each layout, and which fit which GPU.

    Memory and FLOPs are read from the model itself built without weights; a layout the trainer
    would refuse (tp not dividing the heads, more ranks than sequences, MoE with tp) says why.
    --from plans an existing model (shape flags still override); --lora-r a LoRA fine-tune of it
    (base frozen: no gradients or optimizer state for it).
    """
    from llmctl.model.lora import LoraConfig  # torch: kept out of --help
    from llmctl.model.transformer import preset_config  # torch: kept out of --help
    from llmctl.plan import Layout, get_gpu, plan  # torch: kept out of --help

    if dtype not in ("bf16", "fp32"):
        raise UsageError(f"--dtype {dtype!r}: choose bf16 or fp32")
    if not 0 < mfu <= 1:
        raise UsageError(f"--mfu {mfu}: expected a fraction in (0, 1]")
    if seq_len < 1 or batch_tokens % seq_len:
        raise UsageError(f"--batch-tokens {batch_tokens} is not a multiple of --seq-len {seq_len}")
    gpus = [get_gpu(name, gpu_file) for name in (gpu or ["h100"])]
    shape = {"n_layer": n_layer, "n_head": n_head, "n_kv_head": n_kv_head, "d_model": d_model, "d_ff": d_ff}
    if source is None:
        cfg = preset_config(preset, vocab_size or 50304, **shape)
    else:
        cfg = dataclasses.replace(
            _model_config(source, vocab_size), **{k: v for k, v in shape.items() if v is not None}
        )
    lora = LoraConfig(r=lora_r) if lora_targets is None else LoraConfig(r=lora_r, targets=lora_targets)
    cfg.max_seq_len = max(cfg.max_seq_len, seq_len)
    layouts = [Layout(d * t, t, fsdp) for d in _ints("--dp", dp) for t in _ints("--tp", tp)]
    plans, refused = [], []
    for layout in layouts:
        try:
            plans.append(
                plan(cfg, layout, seq_len, batch_tokens // seq_len, micro_batch, dtype, act_ckpt, mfu=mfu, lora=lora)
            )
        except UsageError as e:
            refused.append((layout, str(e)))
    if not plans:
        raise UsageError(f"no layout admitted: {refused[0][1]}")
    p0 = plans[0]
    out.print(
        f"{source or preset}: {p0.n_params / 1e6:,.1f}M params"
        f"{f' ({p0.n_trainable / 1e6:,.2f}M trained: LoRA r={lora_r})' if p0.lora else ''}, {p0.flops_per_token / 1e9:.3f} GFLOPs/token (train), "
        f"{p0.tokens_per_step:,} tokens/step = {p0.flops_per_step / 1e15:.2f} PFLOPs/step; "
        f"{dtype}, micro-batch {micro_batch} x {seq_len}{', activation checkpointing' if act_ckpt else ''}"
    )
    table = Table(title="per-rank memory (GiB)", title_justify="left")
    for col in ("layout", "accum", "params", "grads", "optimizer", "activations", "largest temp", "peak"):
        table.add_column(col, justify="left" if col == "layout" else "right")
    for p in plans:
        r = p.memory.rows()
        table.add_row(str(p.layout), str(p.grad_accum), *(_gib(r[k]) for k in list(r)))
    out.print(table)
    table = Table(title=f"on each GPU at {mfu:.0%} MFU", title_justify="left")
    for col in ("layout", "gpu", "fits", "headroom GiB", "step s", "tokens/s"):
        table.add_column(col, justify="left" if col in ("layout", "gpu", "fits") else "right")
    for p in plans:
        for g in gpus:
            p.gpu = g
            fits = "yes" if p.fits else "NO"
            table.add_row(
                str(p.layout), g.name, fits, _gib(g.memory_bytes - p.memory.peak),
                f"{p.step_seconds:.3f}", f"{p.tokens_per_second:,.0f}",
            )  # fmt: skip
    out.print(table)
    for layout, why in refused:
        out.print(f"refused {layout}: {why}")
