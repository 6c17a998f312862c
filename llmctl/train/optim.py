"""The optimizers a training run can use, in one registry (`OPTIMIZERS`).

`adamw`: AdamW, weight decay on matmul weights only (not on norms, biases or embeddings); torch's
fused kernel where it applies (plain CPU / CUDA tensors; not DTensor shards), as Hugging Face's Trainer.
`muon`: torch's Muon (Newton-Schulz orthogonalized momentum, lr scaled by sqrt(max(1, rows/cols)))
on the 2-D hidden matrices of the transformer blocks, AdamW on the rest (embeddings, the output
head, norms, routers, 3-D expert weights). Muon's groups run at `muon_lr / lr` times the schedule's
learning rate and their momentum warms up linearly from `muon_momentum_start` to `muon_momentum`
over `muon_momentum_warmup` steps (the speedruns' recipe).

`embed_lr` / `head_lr` (None = `lr`) give the input embedding and an untied output head AdamW
groups of their own, at that peak learning rate times the schedule (nanochat's separate embedding
and unembedding rates); a tied embedding is one weight and takes `embed_lr`.

Under FSDP2 (and tensor parallelism) a hidden matrix is a DTensor shard; `Muon` orthogonalizes the
whole matrix, as one process would: the momentum stays sharded (it is elementwise), the Nesterov
update is all-gathered, Newton-Schulz runs on the full matrix on every rank, and each rank applies
its own shard of the result (one all-gather per matrix per step; the speedruns instead spread the
matrices over ranks, which saves the duplicated Newton-Schulz work at 2+ ranks).

Both are returned as one `Optimizer`-like object: `param_groups` (each may carry `lr_ratio`),
`step()`, `zero_grad()`, and `optimizers` (the torch optimizers, for distributed state dicts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

from llmctl.errors import UsageError


class Composite:
    """Several torch optimizers stepped as one (their param groups in order)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)


def _decay_split(named: list[tuple[str, torch.nn.Parameter]]) -> tuple[list, list]:
    decay, no_decay = [], []
    for name, p in named:
        (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    return decay, no_decay


def _own_lr(name: str, cfg: Any) -> float | None:
    """The embedding's or the output head's own peak learning rate, if the config sets one."""
    if name.startswith("embed_tokens."):
        return getattr(cfg, "embed_lr", None)
    if name.startswith("lm_head."):
        return getattr(cfg, "head_lr", None)
    return None


def _adamw(named: list[tuple[str, torch.nn.Parameter]], cfg: Any, drop_empty: bool = False) -> torch.optim.AdamW:
    own = [(n, p) for n, p in named if _own_lr(n, cfg) is not None]
    decay, no_decay = _decay_split([(n, p) for n, p in named if _own_lr(n, cfg) is None])
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if drop_empty:  # torch's distributed state dicts refuse an empty group beside another optimizer
        groups = [g for g in groups if g["params"]]
    for n, p in own:
        wd = 0.0 if p.ndim < 2 or "embed" in n else cfg.weight_decay
        groups.append({"params": [p], "weight_decay": wd, "lr_ratio": _own_lr(n, cfg) / cfg.lr})
    params = [p for _, p in named]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=_fusable(params) or None)


def _fusable(params: list[torch.nn.Parameter]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: plain (not DTensor) floating-point
    tensors on the CPU or a CUDA device. It is one kernel over all of them instead of a dozen small
    ops per tensor (the same update up to float rounding; Hugging Face's Trainer uses it too)."""
    return all(
        not _is_dtensor(p)
        and p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64)
        for p in params
    )


def build_adamw(named: list[tuple[str, torch.nn.Parameter]], cfg: Any) -> Composite:
    return Composite([_adamw(named, cfg)])


class Muon(torch.optim.Muon):
    """torch's Muon, with DTensor parameters (sharded by FSDP2 or tensor parallelism) orthogonalized
    whole: the same update one process computes (module docstring). Plain tensors take torch's step."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if not any(_is_dtensor(p) for g in self.param_groups for p in g["params"]):
            return super().step(closure)
        from torch.distributed.tensor import DTensor, Replicate  # only a sharded run gets here

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                full = update.full_tensor() if isinstance(update, DTensor) else update
                ortho = _zeropower_via_newtonschulz(full, group["ns_coefficients"], group["ns_steps"], group["eps"])
                if isinstance(p, DTensor):  # every rank holds the whole result: keep this rank's shard
                    whole = DTensor.from_local(
                        ortho, p.device_mesh, [Replicate()] * p.device_mesh.ndim, run_check=False
                    )
                    ortho = whole.redistribute(p.device_mesh, p.placements)
                p.mul_(1 - lr * wd)
                p.add_(ortho, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


def _is_dtensor(p: torch.Tensor) -> bool:
    return type(p).__name__ == "DTensor"


def is_hidden_matrix(name: str, p: torch.nn.Parameter) -> bool:
    """A 2-D weight inside a transformer block, other than an MoE router: what Muon optimizes."""
    return p.ndim == 2 and name.startswith("layers.") and "router" not in name and "gate.weight" not in name


def build_muon(named: list[tuple[str, torch.nn.Parameter]], cfg: Any) -> Composite:
    hidden = [p for n, p in named if is_hidden_matrix(n, p)]
    rest = [(n, p) for n, p in named if not is_hidden_matrix(n, p)]
    if not hidden:
        raise UsageError("--optimizer muon: the model has no 2-D hidden matrices to optimize with Muon")
    muon = Muon(hidden, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum)
    for g in muon.param_groups:
        g["lr_ratio"] = cfg.muon_lr / cfg.lr
        g["momentum_schedule"] = True
    return Composite([muon, _adamw(rest, cfg, drop_empty=True)])


OPTIMIZERS: dict[str, Callable[[list[tuple[str, torch.nn.Parameter]], Any], Composite]] = {
    "adamw": build_adamw,
    "muon": build_muon,
}


def build_optimizer(named: list[tuple[str, torch.nn.Parameter]], cfg: Any) -> Composite:
    """The optimizer `cfg.optimizer` names over the trainable `(name, parameter)` pairs."""
    if cfg.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.optimizer]([(n, p) for n, p in named if p.requires_grad], cfg)


def muon_momentum_at(step: int, cfg: Any) -> float:
    """Linear warmup of Muon's momentum from `muon_momentum_start` to `muon_momentum`."""
    if step >= cfg.muon_momentum_warmup:
        return cfg.muon_momentum
    frac = step / max(1, cfg.muon_momentum_warmup)
    return cfg.muon_momentum_start + frac * (cfg.muon_momentum - cfg.muon_momentum_start)


def set_schedule(optim: Composite, step: int, lr: float, cfg: Any) -> None:
    """Each group's learning rate (the schedule's times its ratio) and Muon's momentum for `step`."""
    for g in optim.param_groups:
        g["lr"] = lr * g["lr_ratio"] if "lr_ratio" in g else lr
        if g.get("momentum_schedule"):
            g["momentum"] = muon_momentum_at(step, cfg)
