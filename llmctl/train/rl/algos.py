"""The two on-policy algorithms of `llmctl rl` as (prepare, loss) pairs over a rollout.

`prepare(model, rollout, plan0)` runs once per rollout, under no_grad: the frozen tensors the loss
needs and the rollout's metrics. `loss(model, batch)` is the shared loop's loss_fn on one
micro-batch of the rollout. Formulas: llmctl.train.rl.core; metric names are TRL's.

PPO's value head shares the policy's trunk (`ValueHeadLM`: one linear d_model -> 1 on the final
hidden state, zero-initialised, so every value starts at 0 and the first advantages are the
rewards-to-go; trained with vf_coef x the clipped value loss, as TRL's AutoModelForCausalLMWithValueHead
did). The head is saved in the checkpoint as `value_head.weight` (so a resume restores it and its
Adam moments); loading the checkpoint as a language model ignores it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.train import distributed as D
from llmctl.train.rl import core as R
from llmctl.train.rl.rollout import completion_logps


class ValueHeadLM(Transformer):
    """The policy with a scalar value head; forward(..., keep, return_values=True) -> (logits, values)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.value_head = nn.Linear(cfg.d_model, 1, bias=False)
        nn.init.zeros_(self.value_head.weight)

    def forward(
        self, input_ids: torch.Tensor, keep: torch.Tensor | None = None, return_values: bool = False, **kw: Any
    ):
        if not return_values:
            return super().forward(input_ids, keep=keep, **kw)
        h = self.hidden_states(input_ids, kw.get("positions"), kw.get("doc_ids"))
        h = h if keep is None else h[keep]
        return self.logits(h), self.value_head(h).squeeze(-1).float()


_ROW_KEYS = ("input_ids", "keep", "completion", "cmask")


def _stats_of(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if v.dim() == 0}


def _by_plan(model: torch.nn.Module, ro: dict[str, torch.Tensor], plan: list[list[int]], values: bool):
    """Per-token log-probs (and values) of the whole rollout, computed micro-batch by micro-batch as `plan` trains."""
    shape = ro["cmask"].shape
    logp = torch.zeros(shape, device=ro["cmask"].device)
    vals = torch.zeros(shape, device=ro["cmask"].device)
    for idx in plan:
        sub = {k: ro[k][idx] for k in _ROW_KEYS}
        if values:
            logp[idx], vals[idx] = completion_logps(model, sub, values=True)
        else:
            logp[idx] = completion_logps(model, sub)
    return (logp, vals) if values else logp


def _step_tokens(ro: dict[str, torch.Tensor], cfg: Any) -> torch.Tensor:
    """dapo's normaliser as each micro-batch's loss divides by it, (B,): the rollout's loss tokens over
    all ranks / its optimizer steps per epoch (TRL's num_items_in_batch / steps_per_generation), over
    accum x world, since the loop averages micro-batch losses over both."""
    mask = ro.get("lmask", ro["cmask"])
    tot = torch.tensor([float(mask.sum()), float(mask.size(0))], dtype=torch.float64)
    D.all_reduce_sum(tot)
    world = D.info().world
    per_step = tot[0].item() * cfg.train.batch_size / tot[1].item()
    accum = cfg.train.grad_accum(world)
    return torch.full((mask.size(0),), per_step / (accum * world), dtype=torch.float32, device=mask.device)


def _global_std(x: torch.Tensor) -> float:
    """The unbiased std of x over all ranks (every rank gets the same value)."""
    t = torch.tensor([x.double().sum().item(), (x.double() ** 2).sum().item(), float(x.numel())], dtype=torch.float64)
    D.all_reduce_sum(t)
    s, sq, n = t.tolist()
    return max((sq - s * s / n) / max(n - 1, 1), 0.0) ** 0.5


class GRPO:
    """G completions a prompt, advantages within each prompt's group; a reference only when beta != 0."""

    grouped = True  # num_generations completions a prompt
    value_head = False  # the policy is a plain Transformer
    needs_ref = False  # a reference model only for the KL term (beta != 0)
    default_epochs = 1  # TRL's num_iterations
    default_beta = 0.04

    def __init__(self, cfg: Any, ref: torch.nn.Module | None):
        self.cfg, self.ref = cfg, ref

    def prepare(self, model, ro, plan0):
        cfg, out = self.cfg, {}
        if cfg.epochs > 1 or cfg.rollout_prompts * cfg.group > cfg.train.batch_size:
            # several optimizer steps per rollout: later ones are off-policy and need pi_old's log-probs.
            # The first step's micro-batches are trained while the policy is still pi_old: with one pass,
            # their loss uses its own detached log-probs (`fresh` rows; the same numbers, one forward fewer)
            first = plan0[: cfg.train.grad_accum(D.info().world)] if cfg.epochs == 1 else []
            out["old_logp"] = _by_plan(model, ro, plan0[len(first) :], False)
            fresh = torch.zeros(ro["cmask"].size(0), dtype=torch.bool, device=ro["cmask"].device)
            fresh[[i for idx in first for i in idx]] = True
            out["old_fresh"] = fresh
        if cfg.beta != 0.0:
            out["ref_logp"] = _by_plan(self.ref, ro, plan0, False)
        scores = ro["scores"]
        out["adv"] = R.group_advantages(scores, cfg.num_generations, scale=cfg.scale_rewards)
        if getattr(cfg, "loss_type", "grpo") == "dapo":
            out["num_items"] = _step_tokens(ro, cfg)
        grp = scores.view(-1, cfg.num_generations)
        std = grp.std(dim=1)
        stats = {
            "reward": scores.mean().item(),
            "reward_std": _global_std(scores),  # TRL's: over the whole rollout, all ranks
            "reward_group_std": std.mean().item(),  # the mean of the groups' stds (what the advantages divide by)
            "frac_reward_zero_std": (std == 0).float().mean().item(),
        }
        return out, stats

    def loss(self, model, b):
        cfg = self.cfg
        mask = b.get("lmask", b["cmask"])
        ent_mask = mask
        flat = (b["adv"] == 0) if cfg.skip_flat_groups else None
        if flat is None or not flat.any():
            logp, ent = completion_logps(model, b, entropy=True)
        else:
            # advantage exactly 0 and no KL term: such a completion's loss terms are 0 whatever the policy,
            # so only the others run through the model. The skipped rows keep pi_old's log-probs (ratio 1,
            # loss 0) and the loss is aggregated over the whole micro-batch as usual: the same update.
            rows = (~flat).nonzero()[:, 0]
            if rows.numel() == 0:
                rows = rows.new_zeros(1)  # one row (its loss is 0) keeps the graph, and DDP's hooks, connected
            lp, ent_rows = completion_logps(model, {k: b[k][rows] for k in _ROW_KEYS}, entropy=True)
            base = b["old_logp"] if "old_logp" in b else torch.zeros(mask.shape, dtype=lp.dtype, device=lp.device)
            logp = base.detach().index_put((rows,), lp)
            ent = torch.zeros(mask.shape, dtype=ent_rows.dtype, device=ent_rows.device).index_put((rows,), ent_rows)
            ent_mask = torch.zeros_like(mask).index_put((rows,), mask[rows])
        old = logp.detach()
        if "old_logp" in b:  # pi_old's rollout-time log-probs, but where the policy is still pi_old (`old_fresh`)
            old = b["old_logp"] if "old_fresh" not in b else torch.where(b["old_fresh"][:, None], old, b["old_logp"])
        loss, st = R.grpo_loss(
            logp,
            old,
            b["adv"],
            mask,
            cfg.cliprange,
            cfg.beta,
            b.get("ref_logp"),
            cfg.loss_type,
            cfg.max_new_tokens,
            cfg.epsilon_high,
            cfg.importance_sampling,
            b["num_items"][0] if "num_items" in b else None,
        )
        return loss, {**_stats_of(b), **st, "entropy": R.masked_mean(ent, ent_mask)}

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, st: dict[str, float]) -> None:
        pass


class PPO:
    """One completion a prompt, a value head (ValueHeadLM), GAE and a KL penalty to the reference."""

    grouped = False
    value_head = True
    needs_ref = True
    default_epochs = 4  # TRL's num_ppo_epochs
    default_beta = 0.05  # TRL's kl_coef

    def __init__(self, cfg: Any, ref: torch.nn.Module):
        self.cfg, self.ref = cfg, ref
        self.kl_ctl = R.AdaptiveKL(cfg.beta, cfg.target_kl, cfg.kl_horizon)

    def prepare(self, model, ro, plan0):
        cfg = self.cfg
        mask = ro["cmask"]
        old_logp, old_values = _by_plan(model, ro, plan0, True)
        ref_logp = _by_plan(self.ref, ro, plan0, False)
        kl = R.kl_per_token(old_logp, ref_logp, cfg.kl_estimator) * mask
        scores = ro["scores"].clone()
        if cfg.missing_eos_penalty:
            scores[~ro["ended"]] -= cfg.missing_eos_penalty
        beta = self.kl_ctl.value
        rewards = R.ppo_rewards(scores, kl, mask, beta)
        adv, returns = R.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        adv = R.whiten(adv, mask)
        seq_kl = kl.sum(1)
        non_score = (-beta * kl).sum(1)
        mean_kl = seq_kl.mean().reshape(1).double().cpu()
        D.all_reduce_sum(mean_kl)
        self.kl_ctl.update(mean_kl.item() / D.info().world, scores.numel() * D.info().world)
        stats = {
            "objective/kl": seq_kl.mean().item(),
            "objective/non_score_reward": non_score.mean().item(),
            "objective/scores": scores.mean().item(),
            "objective/rlhf_reward": (scores + non_score).mean().item(),
            "objective/kl_coef": beta,
            "val/mean_value": R.masked_mean(old_values, mask).item(),
        }
        return {"old_logp": old_logp, "old_values": old_values, "returns": returns, "adv": adv}, stats

    def loss(self, model, b):
        cfg, mask = self.cfg, b["cmask"]
        logp, values, ent = completion_logps(model, b, values=True, entropy=True)
        pg, st = R.ppo_policy_loss(logp, b["old_logp"], b["adv"], mask, cfg.cliprange)
        vf, st2 = R.ppo_value_loss(values, b["old_values"], b["returns"], mask, cfg.cliprange_value)
        return pg + cfg.vf_coef * vf, {
            **_stats_of(b),
            **st,
            **st2,
            "loss/policy_avg": pg.detach(),
            "loss/value_avg": vf.detach(),
            "entropy": R.masked_mean(ent, mask),
        }

    def state_dict(self) -> dict[str, float]:
        return self.kl_ctl.state_dict()

    def load_state_dict(self, st: dict[str, float]) -> None:
        self.kl_ctl.load_state_dict(st)


# The algorithms of `llmctl rl --algo`; how to add one: README.md here.
ALGOS: dict[str, type[GRPO] | type[PPO]] = {"grpo": GRPO, "ppo": PPO}
