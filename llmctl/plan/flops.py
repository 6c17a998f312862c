"""Training FLOPs per token from a model's own modules, and the step time they imply at an assumed MFU.

Forward + backward of a matmul costs 6 x (its weight's elements) per token: 2 forward, 4 backward
(the input and the weight gradients). Every nn.Linear counts (the lm head too, tied or not); the
embedding lookup does not; routed experts count k / n_experts of their weights (each token visits
k). A frozen weight (a LoRA fine-tune's base) costs 4: its weight gradient is not computed, the input
gradient still is. Attention adds 12 x n_layer x n_head x head_dim x T per token: QK^T and AV over all T keys,
forward and backward (the full square, as torch.utils.flop_counter and PaLM's estimate count it).

`register_cpu_formulas()` teaches torch.utils.flop_counter the two kernels it has no formula for:
the CPU flash-attention kernel and grouped_mm (the MoE experts), so its count on the default CPU
path can be compared with this one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils import flop_counter

from llmctl.model.moe import Experts, MoE


def matmul_params_per_token(model: nn.Module, trainable: bool = False) -> float:
    """Weight elements one token multiplies through: Linear weights, plus k/E of each expert stack
    (`trainable`: only those that require grad)."""
    total = 0.0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if module.weight.requires_grad or not trainable:
                total += module.weight.numel()
        elif isinstance(module, MoE):
            experts: Experts = module.experts
            ps = [p for p in experts.parameters() if p.requires_grad or not trainable]
            total += sum(p.numel() for p in ps) * module.k / module.n
    return total


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token of a window of `seq_len` tokens."""
    c = model.cfg
    attention = 12 * c.n_layer * c.n_head * c.head_dim * seq_len
    return 4 * matmul_params_per_token(model) + 2 * matmul_params_per_token(model, trainable=True) + attention


def step_seconds(flops_per_step: float, peak_flops: float, mfu: float) -> float:
    """Wall time of one optimizer step at model FLOPs utilisation `mfu` of `peak_flops` (the whole job's)."""
    return flops_per_step / (peak_flops * mfu)


def _grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    # (M, K) x (E, K, N), (E, M, K) x (K, N), (E, M, K) x (E, K, N): out elements x K x 2;
    # (K, S) x (S, N) with groups over S (the weight gradient): out (E, K, N) sums S, not E x S
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    k = a_shape[-1]
    out = 1
    for s in out_shape:
        out *= s
    return 2 * out * k


def register_cpu_formulas() -> None:
    """Register flop_counter formulas for aten's CPU flash attention (+ backward) and grouped_mm (idempotent)."""
    aten = torch.ops.aten
    if aten._grouped_mm in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _sdpa_cpu_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kw) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    flop_counter.register_flop_formula(aten._grouped_mm)(_grouped_mm_flops)
