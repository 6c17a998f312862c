"""The GRPO objective options (dapo, GSPO, clip-higher, truncation masking, overlong penalty, dynamic
sampling) against hand computations and against TRL's own GRPOTrainer._compute_loss on the same tensors."""

import math
from types import SimpleNamespace

import pytest
import rl_helpers as H
import torch

from llmctl.train import distributed as D
from llmctl.train.rl import core as R

MASK = torch.tensor([[True, True, True], [True, True, False]])
RATIOS = torch.tensor([[1.3, 0.9, 1.25], [0.7, 1.0, 2.0]])
REF = torch.tensor([[0.1, -0.1, 0.0], [0.0, 0.2, 0.0]])
ADV = torch.tensor([1.0, -1.0])


def surrogate(r: float, a: float, lo: float, hi: float) -> float:
    return -min(r * a, min(max(r, 1 - lo), 1 + hi) * a)


def k3(lp: float, ref: float) -> float:
    return math.exp(ref - lp) - (ref - lp) - 1


def per_token_by_hand(ratios, beta, lo=0.2, hi=0.2, sequence=False):
    """Rows of per-token losses over the masked tokens only."""
    rows = []
    for i, a in enumerate(ADV.tolist()):
        n = int(MASK[i].sum())
        lps = [math.log(ratios[i][t]) for t in range(n)]
        if sequence:
            w = math.exp(sum(lps) / n)
            rs = [w] * n
        else:
            rs = [ratios[i][t] for t in range(n)]
        rows.append([surrogate(rs[t], a, lo, hi) + beta * k3(lps[t], REF[i, t].item()) for t in range(n)])
    return rows


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_dapo_sums_over_the_step_tokens(beta):
    rows = per_token_by_hand(RATIOS.tolist(), beta)
    logp = RATIOS.log()
    kw = dict(clip=0.2, beta=beta, ref_logp=REF, loss_type="dapo")
    loss, _ = R.grpo_loss(logp, torch.zeros(2, 3), ADV, MASK, num_items=11.0, **kw)
    assert loss.item() == pytest.approx(sum(map(sum, rows)) / 11.0, abs=1e-6)
    alone, _ = R.grpo_loss(logp, torch.zeros(2, 3), ADV, MASK, **kw)  # no step count: the micro-batch's 5 tokens
    assert alone.item() == pytest.approx(sum(map(sum, rows)) / 5, abs=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_sequence_level_importance_sampling_gspo_by_hand(loss_type):
    rows = per_token_by_hand(RATIOS.tolist(), 0.1, sequence=True)
    want = {
        "grpo": sum(sum(r) / len(r) for r in rows) / 2,
        "bnpo": sum(map(sum, rows)) / 5,
        "dr_grpo": sum(map(sum, rows)) / (2 * 8),
        "dapo": sum(map(sum, rows)) / 7.0,
    }[loss_type]
    loss, st = R.grpo_loss(
        RATIOS.log(),
        torch.zeros(2, 3),
        ADV,
        MASK,
        clip=0.2,
        beta=0.1,
        ref_logp=REF,
        loss_type=loss_type,
        max_new_tokens=8,
        importance_sampling="sequence",
        num_items=7.0,
    )
    assert loss.item() == pytest.approx(want, abs=1e-6)
    # row 0: w = (1.3 * 0.9 * 1.25)^(1/3) = 1.134 < 1.2, row 1: w = 0.7^(1/2) = 0.837 > 0.8: nothing clipped
    assert st["clip_ratio/region_mean"].item() == 0.0


def test_clip_higher_by_hand():
    rows = per_token_by_hand(RATIOS.tolist(), 0.0, lo=0.2, hi=0.28)
    loss, st = R.grpo_loss(RATIOS.log(), torch.zeros(2, 3), ADV, MASK, clip=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(sum(sum(r) / len(r) for r in rows) / 2, abs=1e-6)
    # 1.3 with A > 0 is above 1.28 (high); 1.25 no longer is; 0.7 with A < 0 is below 0.8 (low)
    assert st["clip_ratio/high_mean"].item() == pytest.approx(1 / 5)
    assert st["clip_ratio/low_mean"].item() == pytest.approx(1 / 5)
    assert st["clip_ratio/region_mean"].item() == pytest.approx(2 / 5)
    _, sym = R.grpo_loss(RATIOS.log(), torch.zeros(2, 3), ADV, MASK, clip=0.2)
    assert sym["clip_ratio/high_mean"].item() == pytest.approx(2 / 5)  # 1.3 and 1.25 above 1.2


def trl_loss(logp, old, ref, adv, mask, ent, loss_type, level, eps, eps_high, beta, max_len, num_items):
    """TRL's GRPOTrainer._compute_loss itself, on these tensors (the model's forward stubbed to return them)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    fake = H.trl_grpo_self(
        importance_sampling_level=level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps,
        epsilon_high=eps_high,
        model=SimpleNamespace(training=False),
        max_completion_length=max_len,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, ent, None),
    )
    metrics = fake._metrics
    b = logp.size(0)
    inputs = {
        "prompt_ids": torch.zeros(b, 1, dtype=torch.long),
        "prompt_mask": torch.ones(b, 1, dtype=torch.long),
        "completion_ids": torch.zeros_like(mask, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(float(num_items)),
    }
    loss = GRPOTrainer._compute_loss(fake, None, inputs)
    return loss, {k: v[-1] for k, v in metrics["eval"].items()}


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("eps_high,beta", [(0.2, 0.0), (0.28, 0.04)])
def test_loss_and_clip_ratios_equal_trls_compute_loss(loss_type, level, eps_high, beta):
    pytest.importorskip("trl")
    g = torch.Generator().manual_seed(0)
    b, t = 6, 5
    mask = torch.ones(b, t, dtype=torch.bool)
    for i, n in enumerate([5, 3, 1, 4, 5, 2]):
        mask[i, n:] = False
    old = -torch.rand(b, t, generator=g) * 3
    logp = old + torch.randn(b, t, generator=g) * 0.3
    ref = old + torch.randn(b, t, generator=g) * 0.2
    adv = torch.randn(b, generator=g)
    ent = torch.rand(b, t, generator=g)
    want, m = trl_loss(logp, old, ref, adv, mask, ent, loss_type, level, 0.2, eps_high, beta, 8, 9)
    got, st = R.grpo_loss(logp, old, adv, mask, 0.2, beta, ref, loss_type, 8, eps_high, level, 9.0)
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    for k in ("low_mean", "high_mean", "region_mean"):
        assert st[f"clip_ratio/{k}"].item() == pytest.approx(m[f"clip_ratio/{k}"], abs=1e-6)
    if beta:
        assert st["kl"].item() == pytest.approx(m["kl"], abs=1e-6)


def test_dapo_step_loss_over_micro_batches_is_the_step_token_mean():
    """One optimizer step of 4 completions in 2 micro-batches (accum 2): the loop's mean of the micro-batch
    losses equals the sum over the step's tokens / the rollout's tokens per step (TRL's normaliser)."""
    from llmctl.train.loop import TrainConfig
    from llmctl.train.rl.algos import _step_tokens

    D.init("cpu")
    g = torch.Generator().manual_seed(1)
    lengths = [5, 1, 3, 4, 2, 5, 5, 1]  # a rollout of 8 completions, 2 steps of 4
    cmask = torch.tensor([[t < n for t in range(5)] for n in lengths])
    cfg = SimpleNamespace(train=TrainConfig(batch_size=4, micro_batch=2))
    norm = _step_tokens({"cmask": cmask}, cfg)
    per_step = sum(lengths) * 4 / 8
    old = -torch.rand(8, 5, generator=g)
    logp = old + 0.2 * torch.randn(8, 5, generator=g)
    adv = torch.randn(8, generator=g)
    step = [0, 3, 5, 6]  # the first step's rows, in its two micro-batches
    micro = [
        R.grpo_loss(logp[idx], old[idx], adv[idx], cmask[idx], 0.2, loss_type="dapo", num_items=norm[0])[0]
        for idx in (step[:2], step[2:])
    ]
    per_tok = -torch.minimum(logp.sub(old).exp() * adv[:, None], logp.sub(old).exp().clamp(0.8, 1.2) * adv[:, None])
    want = sum(per_tok[i, : lengths[i]].sum().item() for i in step) / per_step
    assert (sum(micro) / 2).item() == pytest.approx(want, abs=1e-6)


def test_overlong_penalty_equals_trls_soft_overlong_punishment():
    trl_rewards = pytest.importorskip("trl.rewards")
    fn = trl_rewards.get_soft_overlong_punishment(max_completion_len=20, soft_punish_cache=8)
    lengths = list(range(0, 22))
    ours = R.overlong_penalty(torch.tensor(lengths), 20, 8).tolist()
    assert ours == pytest.approx(fn([[1] * n for n in lengths]), abs=1e-12)
    assert ours[12] == 0.0 and ours[16] == pytest.approx(-0.5) and ours[20] == -1.0


def rollout(tmp_path, monkeypatch=None, **kw):
    from llmctl.train.rl.algos import GRPO
    from llmctl.train.rl.rewards import Rewards
    from llmctl.train.rl.rollout import RolloutBatches, load_prompts
    from llmctl.train.sft import load_start

    ck, prompts = H.setup(tmp_path)
    cfg = H.config("grpo", beta=0.0, **kw)
    D.init("cpu")
    model, _, tok, _ = load_start(ck)
    tr, _, _, _ = load_prompts(prompts, tok, cfg.max_prompt_len, cfg.val_fraction, cfg.train.seed)
    batches = RolloutBatches(model.train(), tr, tok, cfg, GRPO(cfg, None), Rewards(cfg.reward), accum=2)
    return batches, model, cfg


def test_masked_truncated_completions_get_no_loss_and_entropy_is_the_policys(tmp_path, monkeypatch):
    import llmctl.train.rl.rollout as RR

    real = RR.generate_batch

    def some_stop(*a, **kw):  # a random tiny model rarely ends: make rows 0 and 5 end after 2 tokens
        out = real(*a, **kw)
        for i in (0, 5):
            out.tokens[i], out.stops[i], out.ended[i] = out.tokens[i][:2], kw["stop_ids"][0], True
        return out

    monkeypatch.setattr(RR, "generate_batch", some_stop)
    batches, model, cfg = rollout(tmp_path, mask_truncated=True, loss_type="dapo")
    b = next(batches)
    ro = batches.rollout
    ended = ro["ended"]
    assert ended[0] and ended[5] and not ended.all()
    assert torch.equal(ro["lmask"], ro["cmask"] & ended[:, None])
    kept = ro["cmask"][ended].sum().item()  # the loss tokens: those of completions that ended
    assert ro["num_items"][0].item() == pytest.approx(kept * 8 / 16 / 2)  # 8 of 16 a step, accum 2
    loss, st = batches.algo.loss(model, b)
    # entropy over the loss tokens, against torch's Categorical on the model's own logits
    logits = model(b["input_ids"])[b["keep"]].float()
    ent = torch.distributions.Categorical(logits=logits).entropy()
    flat = torch.zeros(b["cmask"].shape).masked_scatter(b["cmask"], ent)
    want = (flat * b["lmask"]).sum() / b["lmask"].sum().clamp(min=1)
    assert st["entropy"].item() == pytest.approx(want.item(), abs=1e-5)


def half_flat(prompts, completions, answer, **_):
    """Prompts whose reference is even: always 1 (a flat group); the others: the length in characters (a spread)."""
    return [1.0 if int(str(a).split()[-1]) % 2 == 0 else float(len(c)) for c, a in zip(completions, answer)]


def test_dynamic_sampling_keeps_full_batches_of_groups_with_variance(tmp_path):
    kw = dict(reward=["test_rl_objectives:half_flat"], max_new_tokens=4)
    batches, _, cfg = rollout(tmp_path, dynamic_sampling=True, max_draws=8, **kw)
    for _ in range(2):
        batches.cursor = len(batches.plan)  # force the next rollout
        next(batches)
        ro = batches.rollout
        groups = ro["scores"].view(-1, cfg.num_generations)
        assert groups.size(0) == cfg.rollout_prompts  # the full batch of groups
        assert (groups.std(1) > 0).all()  # every one with a reward spread
        drawn = ro["dynamic/groups_drawn"].item()
        assert drawn == ro["dynamic/draws"].item() * cfg.rollout_prompts and drawn > cfg.rollout_prompts
        assert ro["dynamic/flat_kept"].item() == 0 and ro["frac_reward_zero_std"].item() == 0.0
    plain, _, _ = rollout(tmp_path / "plain", **kw)
    next(plain)
    assert plain.rollout["frac_reward_zero_std"].item() > 0  # without it, flat groups reach the loss


def help_names(flag: str) -> list[str]:
    """The names `llmctl rl FLAG`'s help lists (`label: name (note) | name ...`)."""
    import re

    from typer.main import get_command

    from llmctl.cli import app

    text = next(p.help for p in get_command(app).get_command(None, "rl").params if flag in p.opts)
    segs = text.split(" | ")
    segs[0] = segs[0].rsplit(": ", 1)[-1]
    return [re.match(r"[\w][\w:.-]*", s).group(0).rstrip(".") for s in segs]


def test_help_lists_the_registries_and_the_config_checks_them():
    from llmctl.errors import UsageError
    from llmctl.train.rl.tools import TOOLS

    assert help_names("--importance-sampling") == list(R.IMPORTANCE_LEVELS)
    assert help_names("--tool") == [*TOOLS, "MODULE:FUNC"]
    assert "dapo" in help_names("--loss-type")
    with pytest.raises(UsageError, match="choose token, sequence"):
        H.config("grpo", importance_sampling="segment")
    with pytest.raises(UsageError, match="--dynamic-sampling: GRPO options"):
        H.config("ppo", dynamic_sampling=True)
    with pytest.raises(UsageError, match="overlong-penalty 8 must be in"):
        H.config("grpo", overlong_penalty=8)  # max_new_tokens 8


@pytest.mark.parametrize("loss_type", list(R.GRPO_LOSS_TYPES))
@pytest.mark.parametrize("epochs", [1, 2])
def test_skipping_flat_groups_gives_the_same_loss_and_gradients_from_fewer_rows(tmp_path, loss_type, epochs):
    """--skip-flat-groups: half the groups have equal rewards (advantage 0); their completions do not go
    through the model, and the loss and every parameter's gradient equal the full micro-batch's, for each
    aggregation, on-policy (epochs 1) and off-policy (epochs 2: a second step against pi_old's log-probs).
    Entropy is then over the trained completions (torch's Categorical on their logits)."""
    kw = dict(reward=["test_rl_objectives:half_flat"], max_new_tokens=4, loss_type=loss_type, epochs=epochs)
    full, model, _ = rollout(tmp_path / "full", **kw)
    skip, model2, _ = rollout(tmp_path / "skip", skip_flat_groups=True, **kw)
    for _ in range(epochs):  # with epochs 2, the micro-batch of the second pass (pi_old's log-probs kept)
        b, b2 = next(full), next(skip)
    assert torch.equal(b["input_ids"], b2["input_ids"]) and torch.equal(b["adv"], b2["adv"])
    flat = b["adv"] == 0
    assert 0 < flat.sum() < flat.numel()
    if epochs == 2:
        with torch.no_grad():  # move the policy off pi_old, the same way on both sides
            for p, q in zip(model.parameters(), model2.parameters()):
                p.add_(0.01 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).view_as(p))
                q.copy_(p)
    rows = []
    real_forward = type(model2).forward

    def counting(self, input_ids, *a, **k):
        rows.append(input_ids.size(0))
        return real_forward(self, input_ids, *a, **k)

    loss, st = full.algo.loss(model, b)
    loss.backward()
    type(model2).forward = counting
    try:
        loss2, st2 = skip.algo.loss(model2, b2)
    finally:
        type(model2).forward = real_forward
    loss2.backward()
    assert rows == [int((~flat).sum())]  # only the completions with an advantage ran
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-7)
    for (n, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-7, rtol=1e-5), n
    logits = model2(b2["input_ids"][~flat])[b2["keep"][~flat]].float()
    ent = torch.distributions.Categorical(logits=logits).entropy()
    assert st2["entropy"].item() == pytest.approx(ent.mean().item(), abs=1e-5)
    if epochs == 1:
        assert st2["clip_ratio"].item() == st["clip_ratio"].item() == 0.0
    else:  # off-policy: the trained completions' ratios moved (the skipped ones are logged as 1)
        assert "old_logp" in b2 and st2["policy/ratio_max"].item() > 1.001
        assert st2["policy/ratio_max"].item() <= st["policy/ratio_max"].item() * (1 + 1e-6)


def test_skipping_flat_groups_needs_beta_0_and_grpo():
    from llmctl.errors import UsageError

    with pytest.raises(UsageError, match="--skip-flat-groups needs --beta 0"):
        H.config("grpo", beta=0.04, skip_flat_groups=True)
    with pytest.raises(UsageError, match="--skip-flat-groups"):
        H.config("ppo", beta=0.0, skip_flat_groups=True)
