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
    with torch.no_grad():
        now = completion_logps(model, b)
    torch.testing.assert_close(b["old_logp"], now, rtol=0, atol=1e-6)  # the first micro-batch: ratio exactly 1
    with torch.no_grad():  # an optimizer step moves the policy
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    b2 = next(batches)
    with torch.no_grad():
        moved = completion_logps(model, b2)
    assert (moved - b2["old_logp"]).abs()[b2["cmask"]].max() > 1e-3  # pi_old is the rollout's, not the policy's
    _, st = batches.algo.loss(model, b2)
    assert st["policy/ratio_max"].item() > 1.0 + 1e-4 or st["policy/ratio_min"].item() < 1.0 - 1e-4
