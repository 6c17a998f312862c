"""Command: llmctl plan. Registered on the shared app by importing this module."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from llmctl.cli.app import app
from llmctl.cli.common import out
from llmctl.errors import UsageError


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


@app.command("plan")
def plan_cmd(
    preset: Annotated[str, typer.Option(help="Model shape (the presets of `llmctl pretrain`).")] = "124m",
    n_layer: Annotated[Optional[int], typer.Option(help="Override the preset's layer count.")] = None,
    n_head: Annotated[Optional[int], typer.Option(help="Override the preset's attention heads.")] = None,
    n_kv_head: Annotated[Optional[int], typer.Option(help="Key/value heads (< n_head: grouped-query).")] = None,
    d_model: Annotated[Optional[int], typer.Option(help="Override the preset's model width.")] = None,
    d_ff: Annotated[Optional[int], typer.Option(help="Override the preset's MLP width.")] = None,
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size (the tokenizer's).")] = 50304,
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
) -> None:
    """Per-rank memory, FLOPs and step time of training a model on each layout, and which fit which GPU.

    Memory and FLOPs are read from the model itself built without weights; a layout the trainer
    would refuse (tp not dividing the heads, more ranks than sequences, MoE with tp) says why.
    """
    from llmctl.model.transformer import preset_config  # torch: kept out of --help
    from llmctl.plan import Layout, get_gpu, plan  # torch: kept out of --help

    if dtype not in ("bf16", "fp32"):
        raise UsageError(f"--dtype {dtype!r}: choose bf16 or fp32")
    if not 0 < mfu <= 1:
        raise UsageError(f"--mfu {mfu}: expected a fraction in (0, 1]")
    if seq_len < 1 or batch_tokens % seq_len:
        raise UsageError(f"--batch-tokens {batch_tokens} is not a multiple of --seq-len {seq_len}")
    gpus = [get_gpu(name, gpu_file) for name in (gpu or ["h100"])]
    cfg = preset_config(
        preset, vocab_size, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, d_model=d_model, d_ff=d_ff
    )
    cfg.max_seq_len = max(cfg.max_seq_len, seq_len)
    layouts = [Layout(d * t, t, fsdp) for d in _ints("--dp", dp) for t in _ints("--tp", tp)]
    plans, refused = [], []
    for layout in layouts:
        try:
            plans.append(plan(cfg, layout, seq_len, batch_tokens // seq_len, micro_batch, dtype, act_ckpt, mfu=mfu))
        except UsageError as e:
            refused.append((layout, str(e)))
    if not plans:
        raise UsageError(f"no layout admitted: {refused[0][1]}")
    p0 = plans[0]
    out.print(
        f"{preset}: {p0.n_params / 1e6:,.1f}M params, {p0.flops_per_token / 1e9:.3f} GFLOPs/token (train), "
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
