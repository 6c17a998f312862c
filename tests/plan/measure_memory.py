"""Peak memory of real training steps on CPU, by torch's MemTracker (a dispatch mode over storages).

`measured_peak(cfg, ...)` in one process; run as `torchrun --nproc_per_node 2 measure_memory.py OUT.json
CONFIG_JSON` for FSDP2 over 2 gloo ranks; `lora_r` > 0: a LoRA fine-tune (llmctl.model.lora's default targets) (rank 0 writes its peak). The second step's peak is the
steady one (AdamW's state is created in the first step)."""

from __future__ import annotations

import json
import sys

import torch
from torch.distributed._tools.mem_tracker import MemTracker

from llmctl.model.lora import LoraConfig, apply_lora
from llmctl.model.transformer import ModelConfig, Transformer, cross_entropy
from llmctl.train import distributed as D
from llmctl.train.loop import TrainConfig, build_optimizer


class _NoHook:
    def remove(self) -> None:
        pass


def measured_peak(
    cfg: ModelConfig, micro_batch: int, seq_len: int, ac: bool = False, fsdp: bool = False, lora_r: int = 0
) -> float:
    torch.manual_seed(0)
    model = Transformer(cfg)
    if lora_r:
        apply_lora(model, LoraConfig(r=lora_r))
    model.activation_checkpointing = ac
    model = D.wrap(model, fsdp=fsdp)
    opt = build_optimizer(model, TrainConfig())
    x = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len))
    tracker = MemTracker()
    tracker.track_external(model, *getattr(opt, "optimizers", [opt]))
    for step in range(2):
        if step:
            tracker.reset_mod_stats()
        for p in model.parameters():  # MemTracker hooks every parameter's grad: a frozen one has none
            if not p.requires_grad:
                tracker._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
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
