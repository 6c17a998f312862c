"""`llmctl plan`: per-rank memory, FLOPs and step time of a training layout, before any GPU is rented.

Everything is read from the model itself built on shapes only (llmctl.plan.memory, .flops), and a
layout is refused by the same checks the trainers run (llmctl.plan.layout).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmctl.model.lora import LoraConfig
from llmctl.model.transformer import ModelConfig
from llmctl.plan.flops import flops_per_token
from llmctl.plan.gpus import GPU, get_gpu, load_gpus
from llmctl.plan.layout import Layout, check_layout
from llmctl.plan.memory import Memory, meta_model, plan_memory


@dataclass
class Plan:
    cfg: ModelConfig
    layout: Layout
    seq_len: int
    micro_batch: int
    batch_size: int  # sequences per optimizer step over all dp ranks
    grad_accum: int
    dtype: str
    activation_checkpointing: bool
    n_params: int
    flops_per_token: float
    memory: Memory
    gpu: GPU | None = None
    mfu: float = 0.4
    lora: LoraConfig | None = None
    n_trainable: int = 0

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_token * self.tokens_per_step

    @property
    def step_seconds(self) -> float | None:
        """Wall time of an optimizer step on `layout.world` GPUs at `mfu`."""
        if self.gpu is None:
            return None
        return self.flops_per_step / (self.layout.world * self.gpu.peak_flops * self.mfu)

    @property
    def tokens_per_second(self) -> float | None:
        s = self.step_seconds
        return None if s is None else self.tokens_per_step / s

    @property
    def fits(self) -> bool | None:
        return None if self.gpu is None else self.memory.peak <= self.gpu.memory_bytes


def plan(
    cfg: ModelConfig,
    layout: Layout,
    seq_len: int,
    batch_size: int,
    micro_batch: int = 1,
    dtype: str = "bf16",
    activation_checkpointing: bool = False,
    gpu: GPU | None = None,
    mfu: float = 0.4,
    lora: LoraConfig | None = None,
) -> Plan:
    """The plan of training `cfg` on `layout`, in full or (`lora` with rank > 0) as a LoRA fine-tune of
    its frozen base; a layout the trainer would refuse raises its UsageError first. FLOPs are those of
    the model with its adapters (a frozen base still back-propagates through its activations)."""
    accum = check_layout(cfg, layout, batch_size, micro_batch)
    model = meta_model(cfg, lora)
    mem = plan_memory(cfg, layout, micro_batch, seq_len, dtype, activation_checkpointing, model=model, lora=lora)
    return Plan(
        cfg=cfg,
        layout=layout,
        seq_len=seq_len,
        micro_batch=micro_batch,
        batch_size=batch_size,
        grad_accum=accum,
        dtype=dtype,
        activation_checkpointing=activation_checkpointing,
        n_params=model.num_params(),
        flops_per_token=flops_per_token(model, seq_len),
        memory=mem,
        gpu=gpu,
        mfu=mfu,
        lora=lora if lora is not None and lora.r else None,
        n_trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


__all__ = ["GPU", "Layout", "Memory", "Plan", "check_layout", "get_gpu", "load_gpus", "plan"]
