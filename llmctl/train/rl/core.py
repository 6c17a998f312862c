"""The RL formulas `llmctl rl` trains with, on plain tensors (TRL's PPOTrainer / GRPOTrainer formulas).

Shapes: (B, T) per completion token, `mask` True on the completion's tokens (its stop token
included), False on the right padding after it.

KL estimators of KL(pi || ref) per token, from logr = log ref - log pi at the sampled token:
  k1 = -logr                      (unbiased, can be negative; PPO's default, as in TRL)
  k3 = exp(logr) - logr - 1       (unbiased, >= 0; Schulman's estimator, GRPO's)
Both are exactly 0 where pi == ref.

PPO: per-token reward -beta * kl, plus the score at the last completion token; GAE(gamma,
lambda) over the masked tokens (values and rewards are 0 after the completion, so the bootstrap
value after the last token is 0); advantages whitened over the batch's completion tokens;
clipped policy loss max(-A r, -A clip(r, 1-e, 1+e)) and clipped value loss
0.5 max((v - R)^2, (clip(v, v_old-e_v, v_old+e_v) - R)^2), masked means.

GRPO: advantages (r - mean of the prompt's G rewards) / (std + 1e-4) (torch.std: unbiased, as TRL),
Dr. GRPO without the std; per-token loss -min(r A, clip(r) A) + beta k3; aggregated as
one of `GRPO_LOSS_TYPES`.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased (Bessel-corrected) variance over the masked entries, as TRL's masked_var."""
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n.clamp(min=1)
    var = (((x - mean) ** 2) * m).sum() / n.clamp(min=1)
    return var * n / (n - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries; the mean added back when not shift_mean."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    logr = ref_logp - logp
    if estimator == "k1":
        return -logr
    if estimator == "k3":
        return torch.exp(logr) - logr - 1
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1 or k3")


def ppo_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards: -beta * kl on every completion token, + the score on the last one."""
    r = -beta * kl * mask
    last = mask.long().sum(1) - 1
    rows = torch.arange(r.size(0), device=r.device)
    ok = last >= 0
    r[rows[ok], last[ok]] += scores[ok].to(r.dtype)
    return r


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalized advantage estimation; 0 outside the mask."""
    m = mask.to(values.dtype)
    rewards, values = rewards * m, values * m
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    t_len = values.size(1)
    for t in reversed(range(t_len)):
        nxt = values[:, t + 1] if t + 1 < t_len else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * nxt - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    adv = adv * m
    return adv, (adv + values) * m


def ppo_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ratio = torch.exp(logp - old_logp)
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(l1, l2), mask)
    stats = {
        "policy/approxkl": 0.5 * masked_mean((logp - old_logp) ** 2, mask).detach(),
        "policy/clipfrac": masked_mean((l2 > l1).float(), mask),
        "policy/ratio_mean": masked_mean(ratio, mask).detach(),
        "policy/ratio_min": ratio.detach().masked_fill(~mask, float("inf")).min(),
        "policy/ratio_max": ratio.detach().masked_fill(~mask, float("-inf")).max(),
    }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    clipped = torch.clamp(values, old_values - clip, old_values + clip)
    l1 = (values - returns) ** 2
    l2 = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
    return loss, {"val/vf_loss": loss.detach(), "val/clipfrac": masked_mean((l2 > l1).float(), mask)}


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """(N,) rewards of N/G prompts x G completions (a prompt's completions adjacent) -> advantages."""
    g = rewards.view(-1, group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (g.std(dim=1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


def _mean_per_completion(per_token: torch.Tensor, m: torch.Tensor, max_new_tokens: int | None) -> torch.Tensor:
    """grpo: the mean over a completion's tokens, then over completions."""
    return ((per_token * m).sum(1) / m.sum(1).clamp(min=1)).mean()


def _mean_per_token(per_token: torch.Tensor, m: torch.Tensor, max_new_tokens: int | None) -> torch.Tensor:
    """bnpo: the mean over all the batch's completion tokens."""
    return (per_token * m).sum() / m.sum().clamp(min=1)


def _sum_over_budget(per_token: torch.Tensor, m: torch.Tensor, max_new_tokens: int | None) -> torch.Tensor:
    """dr_grpo (Dr. GRPO): the sum over tokens / (completions x max_new_tokens)."""
    return (per_token * m).sum() / (per_token.size(0) * (max_new_tokens or per_token.size(1)))


# GRPO's loss aggregations (`--loss-type`): f(per-token loss, completion mask, max_new_tokens) -> scalar
GRPO_LOSS_TYPES = {"grpo": _mean_per_completion, "bnpo": _mean_per_token, "dr_grpo": _sum_over_budget}


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    loss_type: str = "grpo",
    max_new_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's clipped surrogate with a k3 KL term, aggregated by `loss_type` (a GRPO_LOSS_TYPES name);
    `adv` is (B,) per completion."""
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}; choose {', '.join(GRPO_LOSS_TYPES)}")
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None].to(logp.dtype)
    per_token = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip, 1 + clip) * a)
    stats: dict[str, torch.Tensor] = {}
    if beta != 0.0:
        assert ref_logp is not None
        kl = kl_per_token(logp, ref_logp, "k3")
        per_token = per_token + beta * kl
        stats["kl"] = masked_mean(kl, mask).detach()
    m = mask.to(per_token.dtype)
    loss = GRPO_LOSS_TYPES[loss_type](per_token, m, max_new_tokens)
    clipped = ((ratio < 1 - clip) & (a < 0)) | ((ratio > 1 + clip) & (a > 0))
    stats["clip_ratio"] = masked_mean(clipped.float(), mask)
    stats["policy/ratio_min"] = ratio.detach().masked_fill(~mask, float("inf")).min()
    stats["policy/ratio_max"] = ratio.detach().masked_fill(~mask, float("-inf")).max()
    return loss, stats


class AdaptiveKL:
    """Ziegler et al. (2019)'s controller: beta *= 1 + clip(KL/target - 1, -0.2, 0.2) * n / horizon."""

    def __init__(self, beta: float, target: float | None, horizon: int = 10000):
        self.value, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        err = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + err * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, st: dict[str, float]) -> None:
        self.value = float(st["value"])
