"""GRPO with several optimizer steps per rollout and one pass (TRL's steps_per_generation > 1,
num_iterations 1): the later steps are off-policy, so their ratio is pi / pi_old with pi_old's
log-probs frozen at rollout time (TRL's old_per_token_logps), and it can clip."""

import torch
from test_rl_objectives import rollout

from llmctl.train.rl.rollout import completion_logps


def test_later_steps_of_a_rollout_use_the_rollout_time_log_probs(tmp_path):
    batches, model, cfg = rollout(tmp_path)  # 4 prompts x G 4 = 16 completions, steps of 8: 2 per rollout
    assert cfg.epochs == 1 and cfg.rollout_prompts * cfg.group == 2 * cfg.train.batch_size
    b = next(batches)
    # the first step trains pi_old itself: its own log-probs are pi_old's (no second forward), ratio exactly 1
    assert b["old_fresh"].all()
    _, st = batches.algo.loss(model, b)
    assert st["policy/ratio_min"].item() == 1.0 == st["policy/ratio_max"].item()
    with torch.no_grad():  # the same loss as with pi_old's log-probs from a separate no-grad forward
        frozen = {**b, "old_logp": completion_logps(model, b), "old_fresh": torch.zeros_like(b["old_fresh"])}
    torch.testing.assert_close(batches.algo.loss(model, frozen)[0], batches.algo.loss(model, b)[0], rtol=0, atol=1e-7)
    accum = cfg.train.grad_accum(1)
    assert batches.rollout["old_fresh"][[i for mb in batches.plan[:accum] for i in mb]].all()
    later = batches.plan[accum]  # the second step's rows: pi_old's log-probs were taken at rollout time
    assert not batches.rollout["old_fresh"][later].any()
    with torch.no_grad():
        sub = {k: batches.rollout[k][later] for k in ("input_ids", "keep", "completion", "cmask")}
        torch.testing.assert_close(batches.rollout["old_logp"][later], completion_logps(model, sub), rtol=0, atol=1e-6)
    with torch.no_grad():  # an optimizer step moves the policy
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    for _ in range(accum - 1):  # the rest of the first step
        next(batches)
    b2 = next(batches)
    with torch.no_grad():
        moved = completion_logps(model, b2)
    assert (moved - b2["old_logp"]).abs()[b2["cmask"]].max() > 1e-3  # pi_old is the rollout's, not the policy's
    _, st = batches.algo.loss(model, b2)
    assert st["policy/ratio_max"].item() > 1.0 + 1e-4 or st["policy/ratio_min"].item() < 1.0 - 1e-4
