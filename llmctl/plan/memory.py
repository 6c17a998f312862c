"""Per-rank training memory of a Transformer on a layout, from the model's own modules built on the meta device.

- params: every parameter (a tied weight once) in the training dtype (fp32: bf16 autocast
  keeps fp32 master weights), split by tp where the tensor-parallel plan splits it (matmul weights
  and the embedding; norms are replicated), and by dp under FSDP2.
- grads: the trainable parameters only, split the same way: all of them in full training, the
  adapters' under LoRA (`lora`: llmctl.model.lora.apply_lora on the meta model; the base is frozen).
- optimizer: AdamW's two fp32 moments per trainable parameter element held.
- activations: the bytes autograd saves for backward, read by running the model's forward on meta
  tensors at (micro_batch, seq_len) under `saved_tensors_hooks` (so a change to the model changes
  the plan; under bf16 autocast that includes its bf16 copies of the weights), divided by tp (sequence parallel + head-split attention). With activation
  checkpointing: each block's input, plus one block's saved tensors while it is recomputed.
- temporary: the largest short-lived allocation on top: the loss's (B, T, vocab / tp) fp32
  gradient buffers and the lm head's gradient, and under FSDP2 the unsharded root weights plus two
  blocks' unsharded weights (one computing, one prefetched) and one block's unsharded gradients.
- peak: the larger of the backward peak (params + optimizer + activations + temporary; gradients are
  None at the start of a step) and the optimizer-step peak (params + grads + optimizer + one
  gradient-sized foreach temporary).

MoE layers are measured at a balanced expert load; a measured imbalance adds
(max_load / mean_load - 1) x the routed experts' activations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode

from llmctl.model.lora import LoraConfig, apply_lora
from llmctl.model.moe import is_moe_layer
from llmctl.model.transformer import ModelConfig, Transformer, cross_entropy, rope_cos_sin
from llmctl.plan.layout import Layout

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ADAM_STATES = 2  # exp_avg, exp_avg_sq (fp32)


@dataclass
class Memory:
    """Bytes per rank."""

    params: float
    grads: float
    optimizer: float
    activations: float
    temporary: float

    @property
    def peak(self) -> float:
        backward = self.params + self.optimizer + self.activations + self.temporary
        step = self.params + self.grads + self.optimizer + self.grads
        return max(backward, step)

    def rows(self) -> dict[str, float]:
        return {**asdict(self), "peak": self.peak}


def meta_model(cfg: ModelConfig, lora: LoraConfig | None = None) -> Transformer:
    """The model with shapes only (no memory, no initialisation cost), with `lora`'s adapters applied
    (base frozen) when its rank is positive."""
    with torch.device("meta"):
        model = Transformer(cfg)
        if lora is not None and lora.r:
            apply_lora(model, lora)
    return model


def _local_shape(name: str, p: nn.Parameter, tp: int) -> list[int]:
    """The shape of `p` on one tensor-parallel rank: the plan splits matmul weights and the embedding
    (o_proj and the dense down_proj over their input dimension, the rest over their output), not the norms."""
    shape = list(p.shape)
    if tp > 1 and p.ndim >= 2 and ".lora_" not in name:  # LoRA adapters: counted replicated (small)
        shape[1 if name.endswith(("o_proj.weight", "mlp.down_proj.weight")) else 0] //= tp
    return shape


def param_elements(model: nn.Module, layout: Layout, trainable: bool = False) -> float:
    """Parameter elements one rank holds (`trainable`: those that require grad only). FSDP2 splits each parameter's first dimension into dp equal
    chunks, padding the last: a first dimension smaller than dp (64 stacked experts on 256 ranks) is
    held one row per rank, not 1/dp of it."""
    total = 0
    for name, p in model.named_parameters():
        if trainable and not p.requires_grad:
            continue
        shape = _local_shape(name, p, layout.tp)
        if layout.sharded:
            shape[0] = math.ceil(shape[0] / layout.dp)
        total += math.prod(shape)
    return total


class _Saved:
    """Bytes of the distinct non-parameter storages autograd saves while it is active."""

    def __init__(self, model: nn.Module):
        self.params = {p.untyped_storage()._cdata for p in model.parameters()}
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s._cdata not in self.params:
            self.seen[s._cdata] = s.nbytes()
        return t

    def __enter__(self):
        self.seen.clear()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())


_SAVED: dict[tuple, tuple[list[int], int]] = {}  # a layout changes none of it: reused across layouts


def saved_activations(
    cfg: ModelConfig, micro_batch: int, seq_len: int, dtype: torch.dtype, lora: LoraConfig | None = None
) -> tuple[list[int], int]:
    """(bytes each block saves, bytes the final norm, lm head and loss save) for one micro-batch on one
    rank without parallelism, with `lora`'s adapters applied when given. The model runs on fake CPU
    tensors (shapes only, meta storage), so attention takes the fused kernel a real run takes (saving
    its output and log-sum-exp, not the T x T weights that the meta device's math fallback would).
    Blocks of one kind (dense or MoE, first or not: under LoRA the first block's input needs no
    gradient) save the same, so the first `moe_every` + 1 layers stand for all."""
    key = (repr(cfg), micro_batch, seq_len, dtype, repr(lora) if lora is not None and lora.r else None)
    if key not in _SAVED:
        _SAVED[key] = _saved_activations(cfg, micro_batch, seq_len, dtype, lora)
    return _SAVED[key]


def _saved_activations(
    cfg: ModelConfig, micro_batch: int, seq_len: int, dtype: torch.dtype, lora: LoraConfig | None
) -> tuple[list[int], int]:
    low = dtype != torch.float32
    kinds = replace(cfg, n_layer=min(cfg.n_layer, (cfg.moe_every if cfg.n_experts else 1) + 1))
    with FakeTensorMode(), torch.autocast("cpu", dtype=dtype, enabled=low):
        model = Transformer(kinds)
        if lora is not None and lora.r:
            apply_lora(model, lora)
        model.train()
        saved = _Saved(model)
        x = torch.zeros(micro_batch, seq_len, dtype=torch.long)
        pos = torch.arange(seq_len).expand(micro_batch, seq_len)
        cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_base, cfg.rope_scale)
        h = model.embed_tokens(x)
        per_kind = {}
        for i, block in enumerate(model.layers):
            with saved:
                h = block(h, cos, sin, None)
            per_kind[i == 0, is_moe_layer(cfg, i)] = saved.bytes
        with saved:
            logits = model.lm_head(model.norm(h)).float()
            cross_entropy(logits, x)
        return [per_kind[i == 0, is_moe_layer(cfg, i)] for i in range(cfg.n_layer)], saved.bytes


def plan_memory(
    cfg: ModelConfig,
    layout: Layout,
    micro_batch: int,
    seq_len: int,
    dtype: str = "fp32",
    activation_checkpointing: bool = False,
    model: Transformer | None = None,
    lora: LoraConfig | None = None,
) -> Memory:
    """Per-rank memory of one training step of `cfg` on `layout` (see the module docstring); with
    `lora` (rank > 0) a LoRA fine-tune: `model`, when given, must carry the same adapters."""
    model = model if model is not None else meta_model(cfg, lora)
    act_dtype = DTYPES[dtype]
    params = param_elements(model, layout) * 4
    n_train = param_elements(model, layout, trainable=True)
    blocks, head = saved_activations(cfg, micro_batch, seq_len, act_dtype, lora)
    tp = layout.tp
    logits = micro_batch * seq_len * cfg.vocab_size / tp * 4
    head_trained = model.lm_head.weight.requires_grad
    lm_head = head_trained * cfg.vocab_size * cfg.d_model / tp * 4 / (layout.dp if layout.sharded else 1)
    temporary = 2 * logits + lm_head
    if activation_checkpointing:  # the loss's backward runs before any block is recomputed
        acts = (micro_batch * seq_len * cfg.d_model * act_dtype.itemsize * cfg.n_layer + head) / tp
        temporary = max(temporary, max(blocks) / tp)
    else:
        acts = (sum(blocks) + head) / tp
    if layout.sharded:
        root = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("layers.")) / tp * 4
        block = max(sum(p.numel() for p in b.parameters()) for b in model.layers) / tp * 4
        temporary = max(temporary, root + 3 * block + 2 * logits)
    grads = n_train * 4
    return Memory(params=params, grads=grads, optimizer=ADAM_STATES * grads, activations=acts, temporary=temporary)
