"""The DPO loss family on sequence log-probabilities, with TRL's formulas and metric names.

With h = (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x)), each loss type in
`LOSS_TYPES` maps (h, beta, label smoothing e) to per-pair losses. Implicit rewards: beta (log pi - log ref) of each response, detached. At policy == reference
h = 0, so the sigmoid loss is log 2 = 0.6931 and both rewards are 0: what the first step of a
run from the reference must show.

Log-probs are summed over the response tokens (TRL's default); a loss type marked `average`
(IPO) takes them averaged per token, as TRL passes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossType:
    fn: Callable[[torch.Tensor, float, float], torch.Tensor]  # (h, beta, label_smoothing) -> per-pair losses
    average: bool = False  # on per-token averaged log-probs instead of summed ones


def _sigmoid(h: torch.Tensor, beta: float, e: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023); with label smoothing e, cDPO: -(1-e) log sigmoid(beta h) - e log sigmoid(-beta h)."""
    return -F.logsigmoid(beta * h) * (1 - e) - F.logsigmoid(-beta * h) * e


def _robust(h: torch.Tensor, beta: float, e: float) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024): (-(1-e) log sigmoid(beta h) + e log sigmoid(-beta h)) / (1 - 2e)."""
    return (-F.logsigmoid(beta * h) * (1 - e) + F.logsigmoid(-beta * h) * e) / (1 - 2 * e)


def _ipo(h: torch.Tensor, beta: float, e: float) -> torch.Tensor:
    """IPO (Azar et al. 2023): (h - 1/(2 beta))^2."""
    return (h - 1 / (2 * beta)) ** 2


# The loss types of `llmctl dpo --loss-type`; how to add one: llmctl/train/README.md
LOSS_TYPES: dict[str, LossType] = {
    "sigmoid": LossType(_sigmoid),
    "robust": LossType(_robust),
    "ipo": LossType(_ipo, average=True),
}


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100, average: bool = False
) -> torch.Tensor:
    """Sum (or mean) over positions of log p(labels[t] | ..t) where labels != ignore_index; (B,)."""
    mask = labels != ignore_index
    safe = labels.masked_fill(~mask, 0)
    logp = torch.gather(F.log_softmax(logits.float(), dim=-1), -1, safe.unsqueeze(-1)).squeeze(-1)
    total = (logp * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def response_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    average: bool = False,
) -> torch.Tensor:
    """`sequence_logps(model(input_ids), labels)` with the lm head run on labelled positions only."""
    mask = labels != ignore_index
    logits = model(input_ids, keep=mask)  # (N, vocab): the labelled positions, row-major
    logp = torch.gather(F.log_softmax(logits.float(), dim=-1), -1, labels[mask].unsqueeze(-1)).squeeze(-1)
    total = torch.zeros(labels.shape[0], dtype=logp.dtype, device=logp.device).index_add(0, mask.nonzero()[:, 0], logp)
    return total / mask.sum(-1).clamp(min=1) if average else total


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards), all (B,)."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    losses = LOSS_TYPES[loss_type].fn(h, beta, label_smoothing)
    return losses, beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach()


def dpo_metrics(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """TRL DPOTrainer's metric names (means over the batch)."""
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": policy_chosen.detach().mean(),
        "logps/rejected": policy_rejected.detach().mean(),
    }
