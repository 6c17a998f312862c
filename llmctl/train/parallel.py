"""Tensor parallelism and the 2-D (data x tensor) mesh, applied from outside to a plain Transformer.

`torchrun --nproc_per_node 4 -m llmctl pretrain ... --tp 2` lays the 4 ranks out as a DeviceMesh
of shape (dp=2, tp=2): ranks 0,1 form one tensor-parallel group, 2,3 the other; each group sees
one data shard, and FSDP2 shards over the data dimension (torchtitan's 2-D layout). The model
itself knows nothing of this (as in torchtitan): `apply_tp` rewrites its parameters into DTensors
with torch's tensor-parallel plans (Megatron-LM's split):

- attention q/k/v and MLP gate/up: ColwiseParallel (each rank holds n_head/tp query heads,
  n_kv_head/tp kv heads, d_ff/tp hidden units); o_proj and down_proj: RowwiseParallel, so a block
  costs one all-gather and one reduce-scatter in forward (and the same in backward);
- sequence parallel: the residual stream, the RMSNorms and the embedding output are sharded over
  the sequence dimension (Shard(1)) between the projections, so no rank holds full activations
  outside attention and the MLP; norms' weights are replicated (their gradients summed over tp);
- the embedding is vocabulary-parallel (RowwiseParallel on nn.Embedding) and the lm head
  column-parallel on the same Shard(0) weight, so a tied embedding stays tied;
- with `loss_parallel` (pretrain), the logits stay sharded over the vocabulary and cross-entropy
  runs under torch's `loss_parallel()`: the full (B, T, vocab) logits are never gathered. The other
  trainers (SFT, reward, DPO) gather the logits (their losses index into them).

Everything here runs on CPU with gloo (the tests) as on GPUs with NCCL. What it needs from the
shapes is checked by `check_divisible` before any process builds the model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import nullcontext

import torch

from llmctl.errors import UsageError
from llmctl.model.transformer import ModelConfig
from llmctl.plan import layout


def check_layout(world: int, tp: int) -> None:
    """One line when the tensor-parallel degree does not fit the process count (llmctl.plan.layout's check)."""
    layout.check_world(world, tp)


def check_divisible(cfg: ModelConfig, tp: int) -> None:
    """One-line UsageError when a shape the tensor-parallel plans split does not divide by tp (or MoE with tp),
    or the model has what the plans do not split yet (projection biases, q/k norms)."""
    if tp > 1 and (cfg.qk_norm or cfg.qkv_bias or cfg.o_bias or cfg.mlp_bias):
        raise UsageError(f"--tp {tp}: projection biases and q/k norms (an imported model) are not tensor-parallel yet")
    layout.check_shapes(cfg, tp)


def build_mesh(device_type: str, world: int, tp: int):
    """The (dp, tp) DeviceMesh over all ranks; rank r sits at (r // tp, r % tp)."""
    from torch.distributed.device_mesh import init_device_mesh  # only a parallel run loads it

    return init_device_mesh(device_type, (world // tp, tp), mesh_dim_names=("dp", "tp"))


def apply_tp(model: torch.nn.Module, tp_mesh, loss_parallel: bool) -> None:
    """Shard `model` (an llmctl Transformer, or a subclass with extra heads) over `tp_mesh`, in place."""
    from torch.distributed.tensor import Replicate, Shard  # only a parallel run loads it
    from torch.distributed.tensor.parallel import (  # only a parallel run loads it
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    # Gathering a 2-D (FSDP x TP) parameter for a checkpoint takes two all-gathers, which torch warns
    # about on every rank at every checkpoint; the checkpoint is exact (tests/train/test_tp.py), so quiet it.
    logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
    tied = model.lm_head.weight is model.embed_tokens.weight
    parallelize_module(
        model,
        tp_mesh,
        {
            "embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            "norm": SequenceParallel(),
            "lm_head": ColwiseParallel(
                input_layouts=Replicate(),
                output_layouts=Shard(-1) if loss_parallel else Replicate(),
                use_local_output=not loss_parallel,
            ),
        },
    )
    # The final norm's output is what hidden_states() returns (the reward head and DPO's row selection
    # read it): gathered over the sequence into a plain tensor. The lm head needs it whole anyway.
    model.norm.register_forward_hook(lambda mod, args, out: out.redistribute(placements=[Replicate()]).to_local())
    if tied:  # parallelize_module distributed the two modules' (shared) weight separately: tie them again
        model.lm_head.weight = model.embed_tokens.weight
    for i, block in enumerate(model.layers):
        if not all(
            isinstance(getattr(block.mlp, n, None), torch.nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")
        ):
            raise UsageError(
                f"--tp: layer {i}'s MLP is not a dense SwiGLU ({type(block.mlp).__name__}); "
                "tensor parallelism splits dense MLPs only"
            )
        parallelize_module(
            block,
            tp_mesh,
            {
                "input_layernorm": SequenceParallel(),
                "self_attn": PrepareModuleInput(
                    input_layouts=(Shard(1), None, None, None, None),
                    desired_input_layouts=(Replicate(), None, None, None, None),
                ),
                "self_attn.q_proj": ColwiseParallel(),
                "self_attn.k_proj": ColwiseParallel(),
                "self_attn.v_proj": ColwiseParallel(),
                "self_attn.o_proj": RowwiseParallel(output_layouts=Shard(1)),
                "post_attention_layernorm": SequenceParallel(),
                "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
                "mlp.gate_proj": ColwiseParallel(),
                "mlp.up_proj": ColwiseParallel(),
                "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1)),
            },
        )


def loss_context(enabled: bool):
    """torch's loss_parallel() (cross-entropy on vocabulary-sharded logits) when enabled, else nothing."""
    if not enabled:
        return nullcontext()
    from torch.distributed.tensor.parallel import loss_parallel  # only a parallel run loads it

    return loss_parallel()


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_, also when parameters live on different meshes (or some are plain
    tensors: a reward head outside the plan), which torch's own refuses to mix. Returns a plain tensor."""
    from torch.distributed.tensor import DTensor  # only a parallel run loads it

    params = [p for p in params if p.grad is not None]
    groups: dict = {}
    for p in params:
        groups.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p.grad)
    if len(groups) <= 1:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm
    parts = []
    for grads in groups.values():
        n = torch.nn.utils.get_total_norm(grads, 2.0)
        parts.append(n.full_tensor() if isinstance(n, DTensor) else n)
    total = torch.linalg.vector_norm(torch.stack(parts))
    coef = min(1.0, float(max_norm / (total + 1e-6)))
    if coef < 1.0:
        for p in params:
            p.grad.mul_(coef)
    return total
