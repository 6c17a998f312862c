"""Which (dp, tp, FSDP) layouts a model and batch admit: the refusals the trainers and `llmctl plan` share.

A layout is `world` processes as a (dp = world / tp, tp) mesh. Tensor parallelism splits query
heads, kv heads, the vocabulary and the widths evenly over tp ranks, and dense MLPs only (an MoE
layer has no tensor-parallel plan); every data-parallel rank needs at least one sequence per
micro-step. Each check raises a one-line UsageError and builds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmctl.errors import UsageError
from llmctl.model.transformer import ModelConfig


@dataclass(frozen=True)
class Layout:
    world: int = 1
    tp: int = 1
    fsdp: bool = False  # with tp > 1 and dp > 1 the trainer shards over dp with FSDP2 regardless

    @property
    def dp(self) -> int:
        return self.world // self.tp

    @property
    def sharded(self) -> bool:
        """Whether parameters, gradients and optimizer state are split over the dp ranks (FSDP2)."""
        return self.dp > 1 and (self.fsdp or self.tp > 1)

    def __str__(self) -> str:
        kind = "fsdp" if self.sharded else "ddp" if self.dp > 1 else "tp" if self.tp > 1 else "one process"
        return f"{self.world} = dp{self.dp} x tp{self.tp} ({kind})"


def check_world(world: int, tp: int) -> None:
    """One line when the tensor-parallel degree does not fit the process count."""
    if world < 1:
        raise UsageError(f"the number of processes must be at least 1 (got {world})")
    if tp < 1:
        raise UsageError(f"--tp must be at least 1 (got {tp})")
    if tp > 1 and world == 1:
        raise UsageError(
            f"--tp {tp} needs {tp} processes or more: run under `torchrun --nproc_per_node {tp} -m llmctl ...`"
        )
    if world % tp:
        raise UsageError(
            f"--tp {tp} does not divide the {world} processes (data x tensor parallel needs world = dp x tp)"
        )


def check_shapes(cfg: ModelConfig, tp: int) -> None:
    """One line when a shape the tensor-parallel plans split does not divide by tp, or the model has MoE layers."""
    if tp == 1:
        return
    shapes = [
        ("n_head", cfg.n_head),
        ("n_kv_head", cfg.n_kv_head),
        ("vocab_size", cfg.vocab_size),
        ("d_model", cfg.d_model),
        ("d_ff", cfg.d_ff),
    ]
    bad = [f"{name}={value}" for name, value in shapes if value % tp]
    if bad:
        raise UsageError(
            f"--tp {tp}: {', '.join(bad)} not divisible by {tp} (tensor parallelism splits attention "
            f"heads, kv heads, the vocabulary and the widths evenly over the {tp} ranks); "
            f"choose another --tp or model shape"
        )
    if cfg.n_experts:
        raise UsageError(
            f"--tp {tp}: the model has MoE layers ({cfg.n_experts} experts); tensor parallelism splits "
            "dense MLPs only: use --fsdp over the data-parallel ranks instead"
        )


def check_batch(batch_size: int, micro_batch: int, dp: int) -> int:
    """Gradient-accumulation steps for `batch_size` sequences a step over `dp` data-parallel ranks."""
    if batch_size < dp:
        raise UsageError(
            f"{dp} data-parallel ranks but only {batch_size} sequences a step (more ranks than samples): "
            "raise the batch or use fewer ranks"
        )
    per_step = micro_batch * dp
    if batch_size % per_step:
        raise UsageError(
            f"batch of {batch_size} sequences is not a multiple of micro_batch {micro_batch} x {dp} rank(s)"
        )
    return batch_size // per_step


def check_layout(cfg: ModelConfig, layout: Layout, batch_size: int | None = None, micro_batch: int = 1) -> int:
    """All the refusals for `cfg` trained on `layout`; returns the gradient-accumulation steps (1 without a batch)."""
    check_world(layout.world, layout.tp)
    check_shapes(cfg, layout.tp)
    return 1 if batch_size is None else check_batch(batch_size, micro_batch, layout.dp)
