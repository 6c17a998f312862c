"""The DPO loss family on sequence log-probabilities, with TRL's formulas and metric names.

With h = (log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x)):
  sigmoid (DPO, Rafailov et al. 2023):   -log sigmoid(beta h), with label smoothing e (cDPO):
                                         -(1-e) log sigmoid(beta h) - e log sigmoid(-beta h)
  robust  (Chowdhury et al. 2024):       (-(1-e) log sigmoid(beta h) + e log sigmoid(-beta h)) / (1 - 2e)
  ipo     (Azar et al. 2023):            (h - 1/(2 beta))^2, on length-averaged log-probs (as TRL does)
Implicit rewards: beta (log pi - log ref) of each response, detached. At policy == reference
h = 0, so the sigmoid loss is log 2 = 0.6931 and both rewards are 0: what the first step of a
run from the reference must show.

Log-probs are summed over the response tokens (TRL's default), so a longer response has a
larger |log p|; IPO averages per token instead, which is why TRL passes it averaged log-probs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "robust", "ipo")


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
    e = label_smoothing
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - e) - F.logsigmoid(-beta * h) * e
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * h) * (1 - e) + F.logsigmoid(-beta * h) * e) / (1 - 2 * e)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
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
