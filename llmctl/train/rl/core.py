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
Dr. GRPO without the std; per-token loss -min(w A, clip(w, 1-e_low, 1+e_high) A) + beta k3, with
the importance weight w one of `IMPORTANCE_LEVELS` (per token, or GSPO's one length-normalised
ratio per completion) and e_high > e_low DAPO's clip-higher; aggregated as one of `GRPO_LOSS_TYPES`.
These are TRL GRPOTrainer's `_compute_loss` formulas (`loss_type`, `importance_sampling_level`,
`epsilon`/`epsilon_high`); tests/train/rl/test_rl_objectives.py runs TRL's own function on the
same tensors.

DAPO's soft overlong punishment (`overlong_penalty`) is a reward term on the completion's length.
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


def _mean_per_completion(per_token: torch.Tensor, m: torch.Tensor, max_new_tokens: int | None, num_items=None):
    """grpo: the mean over a completion's tokens, then over completions."""
    return ((per_token * m).sum(1) / m.sum(1).clamp(min=1)).mean()


def _mean_per_token(per_token: torch.Tensor, m: torch.Tensor, max_new_tokens: int | None, num_items=None):
    """bnpo: the mean over the micro-batch's completion tokens."""
    return (per_token * m).sum() / m.sum().clamp(min=1)


def _sum_over_budget(per_token: torch.Tensor, m: torch.Tensor, max_new_tokens: int | None, num_items=None):
    """dr_grpo (Dr. GRPO): the sum over tokens / (completions x max_new_tokens)."""
    return (per_token * m).sum() / (per_token.size(0) * (max_new_tokens or per_token.size(1)))


def _sum_over_batch_tokens(per_token: torch.Tensor, m: torch.Tensor, max_new_tokens: int | None, num_items=None):
    """dapo (DAPO, TRL's default): the sum over tokens / `num_items`, the completion tokens of the whole
    optimizer step (all micro-batches and ranks; TRL's num_items_in_batch per step), so every token of
    the step weighs the same; without `num_items`, the micro-batch's own token count."""
    n = m.sum() if num_items is None else torch.as_tensor(num_items, dtype=per_token.dtype)
    return (per_token * m).sum() / n.clamp(min=1)


# GRPO's loss aggregations (`--loss-type`): f(per-token loss, loss mask, max_new_tokens, num_items) -> scalar
GRPO_LOSS_TYPES = {
    "grpo": _mean_per_completion,
    "bnpo": _mean_per_token,
    "dr_grpo": _sum_over_budget,
    "dapo": _sum_over_batch_tokens,
}


def _token_weights(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """token: one importance weight log(pi/pi_old) per token, (B, T)."""
    return log_ratio


def _sequence_weights(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sequence (GSPO): the completion's mean log-ratio over its masked tokens, one per completion, (B, 1)."""
    m = mask.to(log_ratio.dtype)
    return ((log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0))[:, None]


# Importance-sampling levels (`--importance-sampling`): f(log-ratio (B, T), loss mask) -> log weights
IMPORTANCE_LEVELS = {"token": _token_weights, "sequence": _sequence_weights}


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, cache: int) -> torch.Tensor:
    """DAPO's soft overlong punishment of completion lengths (stop token counted): 0 up to
    max_new_tokens - cache, then falling linearly to -1 at max_new_tokens, -1 beyond (TRL's
    `get_soft_overlong_punishment`)."""
    free = max_new_tokens - cache
    x = lengths.to(torch.float64)
    ramp = (free - x) / cache
    return torch.where(x <= free, torch.zeros_like(x), torch.where(x <= max_new_tokens, ramp, -torch.ones_like(x)))


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax of each row of logits, in nats."""
    lsm = torch.log_softmax(logits.float(), -1)
    return -(lsm.exp() * lsm).sum(-1)


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
    clip_high: float | None = None,
    importance_sampling: str = "token",
    num_items: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's clipped surrogate with a k3 KL term, aggregated by `loss_type` (a GRPO_LOSS_TYPES name);
    `adv` is (B,) per completion; `mask` is the loss mask (tokens that are trained and enter the KL);
    the ratio is clipped to [1 - clip, 1 + clip_high] (clip_high defaults to clip); importance
    weights per `importance_sampling` (an IMPORTANCE_LEVELS name); `num_items` is dapo's normaliser.

    Stats (TRL's names): clip_ratio/{low,high,region}_mean (over the masked tokens; over completions
    at the sequence level), clip_ratio (= region_mean), kl, the ratio's range."""
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}; choose {', '.join(GRPO_LOSS_TYPES)}")
    if importance_sampling not in IMPORTANCE_LEVELS:
        raise ValueError(f"unknown importance_sampling {importance_sampling!r}; choose {', '.join(IMPORTANCE_LEVELS)}")
    hi = clip if clip_high is None else clip_high
    ratio = torch.exp(IMPORTANCE_LEVELS[importance_sampling](logp - old_logp, mask))
    a = adv[:, None].to(logp.dtype)
    per_token = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip, 1 + hi) * a)
    stats: dict[str, torch.Tensor] = {}
    if beta != 0.0:
        assert ref_logp is not None
        kl = kl_per_token(logp, ref_logp, "k3")
        per_token = per_token + beta * kl
        stats["kl"] = masked_mean(kl, mask).detach()
    per_token = per_token.expand(mask.shape)
    m = mask.to(per_token.dtype)
    loss = GRPO_LOSS_TYPES[loss_type](per_token, m, max_new_tokens, num_items)
    low = (ratio < 1 - clip) & (a < 0)
    high = (ratio > 1 + hi) & (a > 0)
    cm = mask if ratio.size(1) == mask.size(1) else torch.ones_like(ratio, dtype=torch.bool)
    stats["clip_ratio"] = masked_mean((low | high).float(), cm)
    stats["clip_ratio/low_mean"] = masked_mean(low.float(), cm)
    stats["clip_ratio/high_mean"] = masked_mean(high.float(), cm)
    stats["clip_ratio/region_mean"] = stats["clip_ratio"]
    r = ratio.detach().expand(mask.shape)
    stats["policy/ratio_min"] = r.masked_fill(~mask, float("inf")).min()
    stats["policy/ratio_max"] = r.masked_fill(~mask, float("-inf")).max()
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
