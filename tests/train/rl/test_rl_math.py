"""The RL formulas against hand computations on small tensors (llmctl.train.rl.core)."""

import math

import pytest
import torch

from llmctl.train.rl import core as R
from llmctl.train.rl.rollout import sequences

MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_gae_matches_the_recursion_by_hand():
    rewards = torch.tensor([[0.1, -0.2, 1.0], [0.5, 2.0, 9.0]])
    values = torch.tensor([[0.3, 0.4, 0.5], [1.0, -1.0, 7.0]])
    gamma, lam = 0.9, 0.8
    adv, ret = R.gae(rewards, values, MASK, gamma, lam)
    # row 0: deltas d_t = r_t + gamma v_{t+1} - v_t with v_3 = 0
    d2 = 1.0 - 0.5
    d1 = -0.2 + 0.9 * 0.5 - 0.4
    d0 = 0.1 + 0.9 * 0.4 - 0.3
    a2, a1 = d2, d1 + gamma * lam * d2
    a0 = d0 + gamma * lam * a1
    # row 1: the padding position (value 7, reward 9) counts as 0
    e1 = 2.0 + 0 - (-1.0)
    e0 = 0.5 + 0.9 * (-1.0) - 1.0
    want = torch.tensor([[a0, a1, a2], [e0 + gamma * lam * e1, e1, 0.0]])
    assert torch.allclose(adv, want, atol=1e-6)
    assert torch.allclose(ret, (want + values * MASK) * MASK, atol=1e-6)


def test_kl_estimators_by_hand_and_zero_at_the_reference():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    k1 = R.kl_per_token(logp, ref, "k1")
    k3 = R.kl_per_token(logp, ref, "k3")
    assert torch.allclose(k1, torch.tensor([0.5, -1.0, 0.0]))
    want3 = [math.exp(r - p) - (r - p) - 1 for p, r in zip(logp.tolist(), ref.tolist())]
    assert torch.allclose(k3, torch.tensor(want3), atol=1e-6)
    assert (k3 >= 0).all()
    for est in ("k1", "k3"):
        assert (R.kl_per_token(logp, logp, est) == 0).all()
    with pytest.raises(ValueError):
        R.kl_per_token(logp, ref, "k2")


def test_ppo_rewards_put_the_score_on_the_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    r = R.ppo_rewards(torch.tensor([2.0, -1.0]), kl, MASK, beta=0.5)
    assert torch.allclose(r, torch.tensor([[-0.05, -0.1, -0.15 + 2.0], [-0.2, -0.25 - 1.0, 0.0]]))


def test_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    vals = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean = sum(vals) / 5
    var = sum((v - mean) ** 2 for v in vals) / 4  # unbiased
    w = R.whiten(x, MASK)
    want = [[(v - mean) / math.sqrt(var + 1e-8) for v in row] for row in ([1, 2, 3], [4, 5, mean])]
    assert torch.allclose(w, torch.tensor(want), atol=1e-6)


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 0.9, 1.0], [0.5, 1.1, 3.0]]))
    adv = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 3.0, 4.0]])
    loss, st = R.ppo_policy_loss(logp, old, adv, MASK, clip=0.2)
    ratio = [[1.5, 0.9, 1.0], [0.5, 1.1]]
    a = [[1.0, -2.0, 0.5], [-1.0, 3.0]]
    terms, clipped = [], []
    for rr, aa in zip(ratio, a):
        for r_, a_ in zip(rr, aa):
            l1, l2 = -a_ * r_, -a_ * min(max(r_, 0.8), 1.2)
            terms.append(max(l1, l2))
            clipped.append(float(l2 > l1))
    assert loss.item() == pytest.approx(sum(terms) / 5, abs=1e-6)
    assert st["policy/clipfrac"].item() == pytest.approx(sum(clipped) / 5)  # 1.5 with A>0 and 0.5 with A<0
    assert st["policy/approxkl"].item() == pytest.approx(
        0.5 * sum(math.log(r_) ** 2 for rr in ratio for r_ in rr) / 5, abs=1e-6
    )


def test_clipped_value_loss_by_hand():
    v = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]])
    old = torch.tensor([[0.5, 0.0, 2.5], [0.5, 0.0, 0.0]])
    ret = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    loss, st = R.ppo_value_loss(v, old, ret, MASK, clip=0.2)
    terms, fr = [], []
    for vi, oi, ri in [(1.0, 0.5, 2.0), (0.0, 0.0, 1.0), (2.0, 2.5, 0.0), (0.5, 0.5, 0.0), (-1.0, 0.0, 0.0)]:
        c = min(max(vi, oi - 0.2), oi + 0.2)
        terms.append(max((vi - ri) ** 2, (c - ri) ** 2))
        fr.append(float((c - ri) ** 2 > (vi - ri) ** 2))
    assert loss.item() == pytest.approx(0.5 * sum(terms) / 5)
    assert st["val/clipfrac"].item() == pytest.approx(sum(fr) / 5)


def test_group_advantages_by_hand_and_equal_rewards_give_zero():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    adv = R.group_advantages(r, 4)
    g = [1.0, 0.0, 0.0, 1.0]
    std = math.sqrt(sum((x - 0.5) ** 2 for x in g) / 3)
    assert torch.allclose(adv[:4], torch.tensor([(x - 0.5) / (std + 1e-4) for x in g]), atol=1e-6)
    assert (adv[4:] == 0).all() and torch.isfinite(adv).all()
    dr = R.group_advantages(r, 4, scale=False)  # Dr. GRPO: no std division
    assert torch.allclose(dr, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))


def test_grpo_loss_by_hand_and_its_aggregations():
    old = torch.zeros(2, 3)
    ratios = torch.tensor([[1.3, 0.9, 1.0], [0.7, 1.0, 2.0]])
    logp = ratios.log()
    ref = torch.tensor([[0.1, -0.1, 0.0], [0.0, 0.2, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    beta = 0.1
    per = []
    for i, a in enumerate(adv.tolist()):
        row = []
        for t in range(3):
            r_ = ratios[i, t].item()
            surr = -min(r_ * a, min(max(r_, 0.8), 1.2) * a)
            lr_ = ref[i, t].item() - logp[i, t].item()
            row.append(surr + beta * (math.exp(lr_) - lr_ - 1))
        per.append(row)
    grpo = (sum(per[0]) / 3 + sum(per[1][:2]) / 2) / 2
    bnpo = (sum(per[0]) + sum(per[1][:2])) / 5
    dr = (sum(per[0]) + sum(per[1][:2])) / (2 * 8)
    kw = dict(clip=0.2, beta=beta, ref_logp=ref)
    loss, st = R.grpo_loss(logp, old, adv, MASK, **kw)
    assert loss.item() == pytest.approx(grpo, abs=1e-6)
    assert R.grpo_loss(logp, old, adv, MASK, loss_type="bnpo", **kw)[0].item() == pytest.approx(bnpo, abs=1e-6)
    assert R.grpo_loss(logp, old, adv, MASK, loss_type="dr_grpo", max_new_tokens=8, **kw)[0].item() == pytest.approx(
        dr, abs=1e-6
    )
    # clipped: 1.3 with A > 0 (row 0) and 0.7 with A < 0 (row 1) -> 2 of 5 tokens
    assert st["clip_ratio"].item() == pytest.approx(2 / 5)


def test_adaptive_kl_controller_moves_toward_the_target():
    c = R.AdaptiveKL(0.1, target=6.0, horizon=100)
    c.update(12.0, 10)  # KL twice the target: error clipped to 0.2
    assert c.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    c.update(5.4, 10)  # 0.9 x target: error -0.1
    assert c.value == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 10 / 100))
    fixed = R.AdaptiveKL(0.1, target=None)
    fixed.update(100.0, 10)
    assert fixed.value == 0.1


def test_grpo_rollout_metrics_use_trls_formulas():
    """reward_std is the std over the whole rollout (TRL's), reward_group_std the mean of the groups' stds."""
    import statistics
    from types import SimpleNamespace

    from llmctl.train.rl.algos import GRPO

    scores = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # two prompts x G 4: one with a signal, one without
    cfg = SimpleNamespace(
        epochs=1,
        beta=0.0,
        num_generations=4,
        group=4,
        scale_rewards=True,
        rollout_prompts=2,
        train=SimpleNamespace(batch_size=8),
    )
    _, st = GRPO(cfg, None).prepare(None, {"scores": torch.tensor(scores)}, [])
    assert st["reward"] == pytest.approx(statistics.mean(scores))
    assert st["reward_std"] == pytest.approx(statistics.stdev(scores))  # 0.518, not the groups' 0.25
    assert st["reward_group_std"] == pytest.approx((statistics.stdev(scores[:4]) + 0.0) / 2)
    assert st["frac_reward_zero_std"] == 0.5


def test_sequences_right_pad_and_mark_the_positions_that_predict_completion_tokens():
    s = sequences([[5, 6, 7], [8]], [[1, 2], []], pad_id=0)
    assert s["input_ids"].tolist() == [[5, 6, 7, 1, 2], [8, 0, 0, 0, 0]]
    assert s["completion"].tolist() == [[1, 2], [0, 0]]
    assert s["cmask"].tolist() == [[True, True], [False, False]]
    # position i predicts token i + 1: the prompt's last token predicts the first completion token
    assert s["keep"].tolist() == [[False, False, True, True, False], [False] * 5]
    assert s["input_ids"].dtype == s["completion"].dtype == torch.long and s["keep"].dtype == torch.bool
    one = sequences([[4]], [[]], pad_id=9)  # no completion token anywhere: one padded column
    assert one["completion"].tolist() == [[9]] and one["cmask"].tolist() == [[False]]
