"""Mixture-of-Experts feed-forward: a top-k router over SwiGLU experts, optional shared experts.

Routing is Mixtral's and Qwen2-MoE's: softmax over all experts' router logits, top-k, then (by
default) the k weights renormalised to sum to 1. Shared experts (DeepSeekMoE / Qwen2-MoE) are
always on: `n_shared_experts` experts of width `moe_d_ff` make one SwiGLU of width
n_shared x moe_d_ff, scaled by Qwen2-MoE's sigmoid gate. The parameter layout makes
`llmctl.export.hf` a rename into MixtralForCausalLM (no shared experts) or Qwen2MoeForCausalLM.

Dispatch has no per-token Python: the (token, slot) assignments are sorted by expert, the tokens
gathered in that order, and each expert's tokens go through one matmul; the results are weighted
and scattered back with `index_add_`. `moe_impl`: "grouped" runs all experts in one
`torch.nn.functional.grouped_mm` per projection (torch >= 2.10: CUDA sm80+, and a CPU kernel),
"loop" one matmul per expert, "auto" (the default) grouped where torch has it, else the loop. A
grouped call that fails (an unsupported dtype, shape or device) falls back to the loop for the rest
of the process, with a warning.

Capacity: dropless by default (`moe_capacity_factor` 0). With a factor c, an expert takes at most
ceil(c x tokens x k / n_experts) assignments, earlier tokens first (Switch); the rest are dropped
(their slot adds nothing, the residual carries the token) and counted.

Auxiliary losses, per MoE layer, from the router logits z (N tokens x E experts):

    load balancing (Switch / Mixtral):  E * sum_i f_i * P_i
        f_i = fraction of the N*k routed assignments that chose expert i (before capacity drops)
        P_i = mean over tokens of softmax(z)_i                       (1.0 when perfectly balanced)
    router z-loss (ST-MoE):             mean over tokens of logsumexp(z)^2

The model's aux loss is the mean over MoE layers of lb_coef * lb + z_coef * z. transformers'
`load_balancing_loss_func` counts f over the k slots separately, so it reads k times this lb.
During training each layer keeps its losses and statistics (expert load, dropped fraction) of
every forward with gradients; the training loop takes them with `router_losses(model)`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake

from llmctl.errors import UsageError

IMPLS = ("auto", "loop", "grouped")


def is_moe_layer(cfg: Any, layer: int) -> bool:
    """Layer `layer` (0-based) is MoE when the model has experts and (layer + 1) % moe_every == 0
    (Qwen2-MoE's decoder_sparse_step: every layer with 1, layers 2, 4, ... with 2)."""
    return cfg.n_experts > 0 and (layer + 1) % cfg.moe_every == 0


def shape_only(t: torch.Tensor) -> bool:
    """A meta or fake tensor (memory plans, fake-process-group checks): shapes without values."""
    return t.device.type == "meta" or is_fake(t)


def _balanced(total: int, n_experts: int) -> list[int]:
    base, extra = divmod(total, n_experts)
    return [base + (i < extra) for i in range(n_experts)]


def expert_counts(flat: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Assignments per expert. Shape-only tensors have no routing to count, so a balanced load stands
    in for them: the load llmctl.plan assumes."""
    if shape_only(flat):
        return torch.tensor(_balanced(flat.numel(), n_experts), device=flat.device)
    return torch.bincount(flat, minlength=n_experts)


def load_balancing_loss(router_logits: torch.Tensor, topk_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """E * sum_i f_i * P_i; router_logits (N, E), topk_idx (N, k)."""
    probs = router_logits.float().softmax(-1)
    f = expert_counts(topk_idx.reshape(-1), n_experts).float() / topk_idx.numel()
    return n_experts * (f * probs.mean(0)).sum()


def z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits)^2."""
    return torch.logsumexp(router_logits.float(), dim=-1).pow(2).mean()


class SwiGLU(nn.Module):
    """A dense SwiGLU feed-forward (the shared experts)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


_grouped_failed = False


def _grouped_available(x: torch.Tensor) -> bool:
    if _grouped_failed or not hasattr(F, "grouped_mm") or shape_only(x):
        return False
    if x.device.type == "cuda":
        return torch.cuda.get_device_capability(x.device) >= (8, 0)
    return True


class Experts(nn.Module):
    """n SwiGLU experts as stacked weights: gate_proj/up_proj (E, F, d), down_proj (E, d, F)."""

    def __init__(self, n: int, d_model: int, d_ff: int, impl: str = "auto"):
        super().__init__()
        self.impl = impl
        self.gate_proj = nn.Parameter(torch.empty(n, d_ff, d_model))
        self.up_proj = nn.Parameter(torch.empty(n, d_ff, d_model))
        self.down_proj = nn.Parameter(torch.empty(n, d_model, d_ff))
        for p in self.parameters():  # the Transformer re-initialises them with the rest of the model
            nn.init.normal_(p, 0.0, 0.02)

    def forward(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """xs (S, d): tokens sorted by expert, counts (E,): how many each expert has."""
        global _grouped_failed
        if self.impl != "loop" and _grouped_available(xs):
            try:
                return self._grouped(xs, counts)
            except (RuntimeError, NotImplementedError) as e:  # an unsupported dtype/shape/device: the loop
                _grouped_failed = True
                warnings.warn(f"grouped_mm failed ({str(e).splitlines()[0][:120]}); MoE uses the per-expert loop")
        return self._loop(xs, counts)

    def _loop(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        outs = []
        sizes = _balanced(len(xs), len(counts)) if shape_only(counts) else counts.tolist()
        for e, xe in enumerate(xs.split(sizes)):  # one host sync per layer, not per expert
            h = F.silu(xe @ self.gate_proj[e].T) * (xe @ self.up_proj[e].T)
            outs.append(h @ self.down_proj[e].T)
        return torch.cat(outs)

    def _grouped(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        dtype = torch.get_autocast_dtype(xs.device.type) if torch.is_autocast_enabled(xs.device.type) else xs.dtype
        offs = counts.cumsum(0).to(torch.int32)
        x = xs.to(dtype)
        g = F.grouped_mm(x, self.gate_proj.to(dtype).transpose(1, 2), offs=offs)
        u = F.grouped_mm(x, self.up_proj.to(dtype).transpose(1, 2), offs=offs)
        return F.grouped_mm(F.silu(g) * u, self.down_proj.to(dtype).transpose(1, 2), offs=offs)


class MoE(nn.Module):
    """The MoE feed-forward of one block: router `gate`, routed `experts`, optional shared expert."""

    def __init__(self, cfg: Any):
        super().__init__()
        self.n, self.k = cfg.n_experts, cfg.moe_top_k
        self.norm_topk, self.jitter, self.capacity = cfg.moe_norm_topk, cfg.moe_jitter, cfg.moe_capacity_factor
        self.lb_coef, self.z_coef = cfg.moe_lb_coef, cfg.moe_z_coef
        self.gate = nn.Linear(cfg.d_model, self.n, bias=False)
        self.experts = Experts(self.n, cfg.d_model, cfg.moe_d_ff, cfg.moe_impl)
        if cfg.n_shared_experts:
            self.shared_expert = SwiGLU(cfg.d_model, cfg.n_shared_experts * cfg.moe_d_ff)
            self.shared_expert_gate = nn.Linear(cfg.d_model, 1, bias=False)
        self.records: list[dict[str, torch.Tensor]] = []

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router logits (N, E) fp32, top-k weights (N, k), top-k expert ids (N, k))."""
        r_in = x
        if self.training and self.jitter > 0:  # Switch: multiplicative noise on the router's input
            r_in = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        logits = self.gate(r_in).float()
        w, idx = logits.softmax(-1).topk(self.k, dim=-1)
        if self.norm_topk:
            w = w / w.sum(-1, keepdim=True)
        return logits, w, idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits, w, idx = self.route(x)
        flat = idx.reshape(-1)  # assignment a = token * k + slot
        order = flat.argsort(stable=True)  # by expert, token order kept within an expert
        counts = expert_counts(flat, self.n)
        dropped = torch.zeros((), device=x.device)
        if self.capacity > 0:
            cap = math.ceil(self.capacity * flat.numel() / self.n)
            starts = counts.cumsum(0) - counts
            rank_in_expert = torch.arange(flat.numel(), device=x.device) - starts[flat[order]]
            keep = rank_in_expert < cap
            dropped = 1.0 - keep.float().mean()
            order, counts = order[keep], counts.clamp(max=cap)
        tok = order // self.k
        h = self.experts(x[tok], counts)
        h = h * w.reshape(-1)[order, None].to(h.dtype)
        out = torch.zeros(x.shape, dtype=h.dtype, device=x.device).index_add_(0, tok, h)
        if hasattr(self, "shared_expert"):
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        if self.training and torch.is_grad_enabled():
            lb, z = load_balancing_loss(logits, idx, self.n), z_loss(logits)
            self.records.append(
                {
                    "aux": self.lb_coef * lb + self.z_coef * z,
                    "lb": lb.detach(),
                    "z": z.detach(),
                    "load": (expert_counts(flat, self.n).float() / flat.numel()).detach(),
                    "dropped": dropped.detach(),
                }
            )
        return out.reshape(shape).to(x.dtype)


# ----------------------------------------------------------------------------- what the loop uses


def moe_layers(model: nn.Module) -> list[tuple[int, MoE]]:
    """(layer index, MoE module) of a model (any wrapper: DDP, compile, FSDP2)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    if isinstance(model, MoE):
        return [(0, model)]
    layers = getattr(model, "layers", [])
    return [(i, b.mlp) for i, b in enumerate(layers) if isinstance(getattr(b, "mlp", None), MoE)]


def discard_records(model: nn.Module) -> None:
    """Forget what earlier forwards (or activation-checkpoint recomputes) recorded."""
    for _, m in moe_layers(model):
        m.records.clear()


def router_losses(model: nn.Module) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """The aux loss to add to the training loss (None for a dense model) and the step's metrics:
    moe_aux_loss, moe_lb_loss, moe_z_loss, moe_dropped (means over MoE layers and forwards) and
    moe_load/L{layer}/e{expert} (fraction of that layer's routed assignments). Clears the records."""
    layers = moe_layers(model)
    recs = [(i, r) for i, m in layers for r in m.records]
    for _, m in layers:
        m.records.clear()
    if not recs:
        return None, {}
    n = len(recs)
    aux = sum(r["aux"] for _, r in recs) / n
    out: dict[str, Any] = {
        "moe_aux_loss": aux.detach(),
        "moe_lb_loss": sum(r["lb"] for _, r in recs) / n,
        "moe_z_loss": sum(r["z"] for _, r in recs) / n,
        "moe_dropped": sum(r["dropped"] for _, r in recs) / n,
    }
    per_layer: dict[int, list[torch.Tensor]] = {}
    for i, r in recs:
        per_layer.setdefault(i, []).append(r["load"])
    for i, loads in per_layer.items():
        for e, v in enumerate((sum(loads) / len(loads)).tolist()):
            out[f"moe_load/L{i}/e{e}"] = v
    return aux, out


def add_imbalance(metrics: dict[str, float]) -> dict[str, float]:
    """moe_imbalance: the largest max/mean expert load over layers, from the (rank-averaged) loads."""
    per_layer: dict[str, list[float]] = {}
    for k, v in metrics.items():
        if k.startswith("moe_load/"):
            per_layer.setdefault(k.split("/")[1], []).append(v)
    if per_layer:
        metrics["moe_imbalance"] = max(max(v) / max(sum(v) / len(v), 1e-12) for v in per_layer.values())
    return metrics


def inactive_params(cfg: Any) -> int:
    """Routed-expert parameters a token does not use: (E - k) experts per MoE layer."""
    per_expert = 3 * cfg.d_model * cfg.moe_d_ff
    n_moe = sum(is_moe_layer(cfg, i) for i in range(cfg.n_layer))
    return n_moe * max(0, cfg.n_experts - cfg.moe_top_k) * per_expert


def check_config(cfg: Any) -> None:
    if cfg.n_experts < 0 or cfg.n_shared_experts < 0:
        raise UsageError("n_experts and n_shared_experts must be >= 0")
    if cfg.n_experts and not 1 <= cfg.moe_top_k <= cfg.n_experts:
        raise UsageError(f"moe_top_k={cfg.moe_top_k} must be between 1 and n_experts={cfg.n_experts}")
    if cfg.moe_every < 1:
        raise UsageError(f"moe_every={cfg.moe_every} must be >= 1 (1 = every layer is MoE)")
    if cfg.moe_capacity_factor < 0 or cfg.moe_jitter < 0 or cfg.moe_lb_coef < 0 or cfg.moe_z_coef < 0:
        raise UsageError("moe_capacity_factor, moe_jitter, moe_lb_coef and moe_z_coef must be >= 0")
    if cfg.moe_impl not in IMPLS:
        raise UsageError(f"unknown moe_impl {cfg.moe_impl!r}; choose {', '.join(IMPLS)}")
