"""DPO: the loss family against formulas, log 2 at policy == reference, cached reference, learning."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from align_helpers import synthetic_prefs, tiny_checkpoint, tokenizer, write_jsonl

from llmctl.data.chat_data import encode_pair, to_messages
from llmctl.errors import UsageError
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.train.dpo import DPOConfig, collate_dpo, make_dpo_loss, run_dpo
from llmctl.train.dpo_loss import dpo_loss, response_logps, sequence_logps

PC = torch.tensor([-10.0, -20.5, -3.0], dtype=torch.float64)
PR = torch.tensor([-12.0, -19.0, -3.5], dtype=torch.float64)
RC = torch.tensor([-11.0, -20.0, -2.0], dtype=torch.float64)
RR = torch.tensor([-11.5, -19.5, -4.0], dtype=torch.float64)


def _ls(x: float) -> float:  # log sigmoid
    return -math.log1p(math.exp(-x))


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_sigmoid_dpo_loss_and_rewards_equal_the_formula(beta):
    losses, rc, rr = dpo_loss(PC, PR, RC, RR, beta=beta)
    for i in range(3):
        h = (PC[i] - RC[i]).item() - (PR[i] - RR[i]).item()
        assert losses[i].item() == pytest.approx(-_ls(beta * h), abs=1e-12)
        assert rc[i].item() == pytest.approx(beta * (PC[i] - RC[i]).item(), abs=1e-12)
        assert rr[i].item() == pytest.approx(beta * (PR[i] - RR[i]).item(), abs=1e-12)


def test_label_smoothing_robust_and_ipo_equal_their_formulas():
    beta, e = 0.2, 0.1
    cdpo, _, _ = dpo_loss(PC, PR, RC, RR, beta, "sigmoid", e)
    robust, _, _ = dpo_loss(PC, PR, RC, RR, beta, "robust", e)
    ipo, _, _ = dpo_loss(PC, PR, RC, RR, beta, "ipo")
    for i in range(3):
        h = (PC[i] - RC[i]).item() - (PR[i] - RR[i]).item()
        assert cdpo[i].item() == pytest.approx(-(1 - e) * _ls(beta * h) - e * _ls(-beta * h), abs=1e-12)
        assert robust[i].item() == pytest.approx(
            (-(1 - e) * _ls(beta * h) + e * _ls(-beta * h)) / (1 - 2 * e), abs=1e-12
        )
        assert ipo[i].item() == pytest.approx((h - 1 / (2 * beta)) ** 2, abs=1e-12)


def _pairs(tok, n=4):
    rows = synthetic_prefs(n, seed=3)
    return [
        (
            encode_pair(tok, to_messages(r["prompt"]), r["chosen"], 128),
            encode_pair(tok, to_messages(r["prompt"]), r["rejected"], 128),
        )
        for r in rows
    ]


def test_sequence_logps_sum_response_tokens_only():
    tok = tokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=128)).eval()
    pairs = _pairs(tok)
    b = collate_dpo(pairs, tok.pad_id)
    with torch.no_grad():
        got = sequence_logps(model(b["input_ids"]), b["labels"])
        seqs = [c for c, _ in pairs] + [r for _, r in pairs]
        for i, e in enumerate(seqs):  # each sequence alone, no padding
            logp = F.log_softmax(model(torch.tensor([e.ids]))[0].double(), -1)
            want = sum(logp[t - 1, e.ids[t]].item() for t in range(1, len(e.ids)) if e.mask[t])
            assert got[i].item() == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("average", [False, True])
def test_response_logps_equal_the_full_head_and_its_gradient(average):
    """The lm head on labelled positions only gives the full computation's log-probs and gradients."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, max_seq_len=32))
    ids = torch.randint(0, 64, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 5:9], labels[1, 2:11], labels[2, 7:8] = ids[0, 6:10], ids[1, 3:12], ids[2, 8:9]
    full = sequence_logps(model(ids), labels, average=average)
    full.sum().backward()
    g_full = model.lm_head.weight.grad.clone()
    model.zero_grad()
    part = response_logps(model, ids, labels, average=average)
    part.sum().backward()
    assert torch.allclose(part, full, atol=1e-5)
    assert torch.allclose(model.lm_head.weight.grad, g_full, atol=1e-5)


def test_first_step_with_policy_equal_to_reference_is_log2_with_zero_rewards():
    tok = tokenizer()
    torch.manual_seed(0)
    policy = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=128))
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    b = collate_dpo(_pairs(tok), tok.pad_id)
    loss, m = make_dpo_loss(DPOConfig(beta=0.1), ref)(policy, b)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(0, abs=1e-6)
    assert m["rewards/rejected"].item() == pytest.approx(0, abs=1e-6)
    assert m["rewards/margins"].item() == pytest.approx(0, abs=1e-6)
    assert m["logps/chosen"].item() < 0
    loss.backward()  # gradients reach the policy, not the reference
    assert policy.embed_tokens.weight.grad is not None and ref.embed_tokens.weight.grad is None
    # cached reference log-probs give the same loss as running the reference
    with torch.no_grad():
        ref_lp = response_logps(ref, b["input_ids"], b["labels"])
    loss2, _ = make_dpo_loss(DPOConfig(beta=0.1), None)(policy, {**b, "ref_logps": ref_lp})
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-7)


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="loss_type"):
        DPOConfig(loss_type="kto")
    with pytest.raises(UsageError, match="label_smoothing"):
        DPOConfig(label_smoothing=0.5)


@pytest.mark.parametrize("cache_ref", [False, True])
def test_dpo_raises_held_out_reward_accuracy(tmp_path, cache_ref):
    ck = tiny_checkpoint(tmp_path / "ck")
    data = write_jsonl(tmp_path / "prefs.jsonl", synthetic_prefs(160))
    cfg = DPOConfig(beta=0.1, max_len=64, val_fraction=0.25, cache_ref=cache_ref)
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch, cfg.train.lr = 15, 8, 8, 3e-3
    cfg.train.warmup_steps, cfg.train.eval_every, cfg.train.log_every = 2, 15, 100
    summary = run_dpo(data, ck, tmp_path / "dpo", cfg)
    assert summary["val_rewards/accuracies"] >= 0.9, summary  # 0 at the start: rewards are exactly 0
    assert summary["val_rewards/margins"] > 0
    rec = [json.loads(ln) for ln in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert rec[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # first step: policy == reference
    assert rec[0]["rewards/chosen"] == pytest.approx(0, abs=1e-6)


def test_dpo_resume_continues_exactly(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck")
    data = write_jsonl(tmp_path / "prefs.jsonl", synthetic_prefs(48))

    def cfg(stop_after=None):
        c = DPOConfig(max_len=64, val_fraction=0.0)
        c.train.steps, c.train.batch_size, c.train.micro_batch, c.train.lr, c.train.warmup_steps = 4, 4, 2, 1e-3, 1
        c.train.eval_every, c.train.ckpt_every, c.train.stop_after = 0, 2, stop_after
        return c

    run_dpo(data, ck, tmp_path / "full", cfg())
    part = run_dpo(data, ck, tmp_path / "part", cfg(stop_after=2))
    assert not part["finished"]
    run_dpo(data, ck, tmp_path / "part", cfg(), resume=True)
    losses = [
        [json.loads(ln)["loss"] for ln in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("full", "part")
    ]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_eval_prefs_on_a_dpo_model_reports_implicit_reward_against_its_reference(tmp_path):
    """`--task prefs` on a DPO run: implicit-reward accuracy and margin against the reference the run
    recorded, on the pairs it held out, equal to a pair-by-pair computation; the reference scores 0.5."""
    from llmctl.data.chat_data import split_of
    from llmctl.eval.runner import EvalConfig, run_eval
    from llmctl.model.checkpoint import load_checkpoint, resolve_checkpoint

    ck = tiny_checkpoint(tmp_path / "ck")
    rows = synthetic_prefs(120)
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    cfg = DPOConfig(beta=0.2, max_len=64, val_fraction=0.25)
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch, cfg.train.lr = 12, 8, 8, 3e-3
    cfg.train.warmup_steps, cfg.train.eval_every, cfg.train.log_every = 2, 12, 100
    summary = run_dpo(data, ck, tmp_path / "dpo", cfg)
    ecfg = EvalConfig(tasks=["prefs"], batch_size=3, progress=False)
    ecfg.prefs.data = str(data)
    got = {r["metric"]: r for r in run_eval(tmp_path / "dpo", tmp_path / "res", ecfg)["stats"]["results"]}

    tok = tokenizer()
    policy = load_checkpoint(resolve_checkpoint(tmp_path / "dpo"))[0]
    ref = load_checkpoint(ck)[0]

    def logp(model, prompt, reply):  # one sequence alone, no padding
        e = encode_pair(tok, to_messages(prompt), reply, 64)
        with torch.no_grad():
            lp = F.log_softmax(model(torch.tensor([e.ids]))[0].double(), -1)
        return sum(lp[t - 1, e.ids[t]].item() for t in range(1, len(e.ids)) if e.mask[t])

    held = [r for r in rows if split_of(r, (to_messages(r["prompt"]), r["chosen"], r["rejected"]), 0.25, 1337) == "val"]
    h = [
        (logp(policy, r["prompt"], r["chosen"]) - logp(ref, r["prompt"], r["chosen"]))
        - (logp(policy, r["prompt"], r["rejected"]) - logp(ref, r["prompt"], r["rejected"]))
        for r in held
    ]
    assert got["implicit_accuracy"]["n"] == len(held) == summary["data"]["val"]
    assert got["implicit_accuracy"]["value"] == pytest.approx(sum(x > 0 for x in h) / len(h))
    assert got["implicit_margin"]["value"] == pytest.approx(0.2 * sum(h) / len(h), abs=1e-4)
    assert got["implicit_margin"]["value"] == pytest.approx(summary["val_rewards/margins"], abs=1e-4)
    assert got["implicit_accuracy"]["value"] >= 0.9
    for m in ("likelihood_accuracy", "reference_likelihood_accuracy"):
        assert 0 <= got[m]["value"] <= 1

    ecfg.prefs.reference = str(tmp_path / "dpo")  # the model against itself: every implicit reward is 0
    same = {r["metric"]: r for r in run_eval(tmp_path / "dpo", tmp_path / "res2", ecfg)["stats"]["results"]}
    assert same["implicit_accuracy"]["value"] == 0.5 and same["implicit_margin"]["value"] == 0.0

    tiny_checkpoint(ck, seed=5)  # the recorded reference changed under the run: refused
    ecfg.prefs.reference = ""
    with pytest.raises(UsageError, match="has changed since"):
        run_eval(tmp_path / "dpo", tmp_path / "res3", ecfg)
