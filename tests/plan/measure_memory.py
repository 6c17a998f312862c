"""Peak memory of real training steps on CPU, by torch's MemTracker (a dispatch mode over storages).

`measured_peak(cfg, ...)` in one process; run as `torchrun --nproc_per_node 2 measure_memory.py OUT.json
CONFIG_JSON` for FSDP2 over 2 gloo ranks (rank 0 writes its peak). The second step's peak is the
steady one (AdamW's state is created in the first step)."""

from __future__ import annotations

import json
import sys

import torch
from torch.distributed._tools.mem_tracker import MemTracker

from llmctl.model.transformer import ModelConfig, Transformer, cross_entropy
from llmctl.train import distributed as D
from llmctl.train.loop import TrainConfig, build_optimizer


def measured_peak(cfg: ModelConfig, micro_batch: int, seq_len: int, ac: bool = False, fsdp: bool = False) -> float:
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.activation_checkpointing = ac
    model = D.wrap(model, fsdp=fsdp)
    opt = build_optimizer(model, TrainConfig())
    x = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len))
    tracker = MemTracker()
    tracker.track_external(model, *getattr(opt, "optimizers", [opt]))
    for step in range(2):
        if step:
            tracker.reset_mod_stats()
        with tracker:
            cross_entropy(model(x), x).backward()
            opt.step()
            opt.zero_grad()
    (peak,) = tracker.get_tracker_snapshot("peak").values()
    return peak["Total"]


if __name__ == "__main__":
    D.init("cpu")
    spec = json.loads(sys.argv[2])
    peak = measured_peak(ModelConfig(**spec.pop("model")), **spec)
    if D.info().master:
        with open(sys.argv[1], "w") as f:
            json.dump({"peak": peak}, f)
    D.shutdown()
