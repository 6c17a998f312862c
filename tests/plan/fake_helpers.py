"""One training step of a model at a large world size in one process: torch's fake process group
(collectives return at once) with shape-only (fake) tensors, through the trainer's own layout checks,
tensor-parallel plan and FSDP2 wrapping."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

from llmctl.model.transformer import ModelConfig, Transformer, cross_entropy
from llmctl.train import distributed as D
from llmctl.train import parallel as P
from llmctl.train.loop import TrainConfig, build_optimizer


def fake_step(cfg: ModelConfig, world: int, tp: int, fsdp: bool = True, seq_len: int = 256) -> dict:
    """Build, wrap, run forward + backward + clip + AdamW step as rank 0 of `world`; returns what rank 0 holds."""
    P.check_layout(world, tp)
    P.check_divisible(cfg, tp)
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    saved = D._DIST
    try:
        mesh = P.build_mesh("cpu", world, tp) if tp > 1 else None
        D._DIST = D.Dist(0, world, 0, torch.device("cpu"), tp, mesh)
        with torch.device("meta"):
            model = Transformer(cfg)
        model = D.wrap(model, fsdp=fsdp, loss_parallel=tp > 1)
        with FakeTensorMode(allow_non_fake_inputs=True):  # after wrap: fully_shard does not run on fake tensors
            model.to_empty(device="cpu")  # FSDP2 refuses meta parameters
            opt = build_optimizer(model, TrainConfig())
            x = torch.randint(0, cfg.vocab_size, (1, seq_len))
            with P.loss_context(tp > 1):
                logits = model(x)
                cross_entropy(logits, x).backward()
            P.clip_grad_norm(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
        return {"logits": logits, "local_params": local}
    finally:
        D._DIST = saved
        dist.destroy_process_group()
