"""Reward model: Bradley-Terry loss against the formula, the last-token read, learning, scoring."""

from __future__ import annotations

import math

import pytest
import torch
from align_helpers import synthetic_prefs, tiny_checkpoint, tokenizer, write_jsonl

from llmctl.data.chat_data import encode_pair, split_of, to_messages
from llmctl.errors import UsageError
from llmctl.model.transformer import ModelConfig
from llmctl.train.reward import (
    RewardConfig,
    RewardModel,
    bt_loss,
    collate_pairs,
    encode_prefs,
    load_reward_model,
    make_rm_evaluate,
    rm_loss,
    run_reward,
    score,
)


def test_bt_loss_equals_formula():
    rc = torch.tensor([1.5, -0.2, 0.0, 3.0], dtype=torch.float64)
    rr = torch.tensor([0.5, 0.4, 0.0, -1.0], dtype=torch.float64)
    want = sum(-math.log(1 / (1 + math.exp(-(c - r)))) for c, r in zip(rc.tolist(), rr.tolist())) / 4
    assert bt_loss(rc, rr).item() == pytest.approx(want, abs=1e-12)
    assert bt_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2), abs=1e-7)


def test_reward_is_read_at_the_last_non_padding_token():
    tok = tokenizer()
    torch.manual_seed(0)
    model = RewardModel(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=128)).eval()
    p = to_messages("Is the sky blue?")
    pairs = [(encode_pair(tok, p, "Yes, it is blue on a clear day.", 128), encode_pair(tok, p, "No.", 128))]
    b = collate_pairs(pairs, tok.pad_id)
    with torch.no_grad():
        r = model(b["input_ids"], last_index=b["last_index"])
        alone = [model(torch.tensor([e.ids]))[0, -1].item() for e in pairs[0]]  # no padding at all
        loss, m = rm_loss(model, b)
    assert r.tolist() == pytest.approx(alone, abs=1e-5)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-(alone[0] - alone[1])))), abs=1e-5)
    assert m["accuracy"].item() == float(alone[0] > alone[1])


def test_reward_model_beats_chance_on_held_out_pairs_and_scores(tmp_path):
    tok = tokenizer()
    ck = tiny_checkpoint(tmp_path / "ck")
    rows = synthetic_prefs(200)
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    cfg = RewardConfig(max_len=64, val_fraction=0.25)
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch, cfg.train.lr = 25, 8, 8, 3e-3
    cfg.train.warmup_steps, cfg.train.eval_every, cfg.train.log_every = 2, 25, 100
    summary = run_reward(data, ck, tmp_path / "rm", cfg)
    n_val = summary["data"]["val"]
    assert n_val >= 30
    assert summary["val_accuracy"] >= 0.9, summary  # chance is 0.5
    assert summary["val_margin"] > 0

    scorer = load_reward_model(tmp_path / "rm")
    key = lambda r: (to_messages(r["prompt"]), r["chosen"], r["rejected"])  # noqa: E731
    val_rows = [r for r in rows if split_of(r, key(r), 0.25, cfg.train.seed) == "val"][:8]
    assert len(val_rows) == 8
    good = scorer.score([r["prompt"] for r in val_rows], [r["chosen"] for r in val_rows])
    bad = score(tmp_path / "rm", [r["prompt"] for r in val_rows], [r["rejected"] for r in val_rows])
    assert sum(g > b for g, b in zip(good, bad)) >= 7
    mixed = [r["chosen"] if i % 2 else r["rejected"] + " and more words here" for i, r in enumerate(val_rows)]
    batched = scorer.score([r["prompt"] for r in val_rows], mixed, batch_size=3)  # sorted by length inside
    assert batched == pytest.approx([scorer.score([r["prompt"]], [m])[0] for r, m in zip(val_rows, mixed)], abs=1e-5)
    # held-out metrics recomputed from the saved model agree with what the run logged
    _, val, _ = encode_prefs(tok, rows, 64, 0.25, cfg.train.seed)
    with torch.no_grad():
        again = make_rm_evaluate(val, 8, tok.pad_id)(scorer.model)
    assert again["val_accuracy"] == pytest.approx(summary["val_accuracy"], abs=1e-9)


def test_a_language_model_checkpoint_is_not_a_reward_model(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck")
    with pytest.raises(UsageError, match="not a reward model"):
        load_reward_model(ck)
    with pytest.raises(UsageError, match="preference columns"):
        encode_prefs(tokenizer(), [{"prompt": "x", "response": "y"}], 64, 0.1, 0)


def test_pair_truncation_keeps_the_same_prompt_for_chosen_and_rejected():
    from llmctl.data.chat_data import encode_responses

    tok = tokenizer()
    ec, er = encode_responses(tok, to_messages("tell me a long story " * 30), ["ok", "no way " * 40], 64)
    n_c, n_r = ec.mask.index(True), er.mask.index(True)
    assert n_c == n_r >= 32 and ec.ids[:n_c] == er.ids[:n_r]  # prompt cut left to max(64 - longest, 32) tokens
    assert len(ec.ids) <= 64 and len(er.ids) == 64 and ec.truncated and er.truncated
    assert ec.ids[n_c:] == tok.encode("ok") + [tok.special_ids["<|end|>"]]


def test_eval_prefs_scores_pairs_as_the_run_validated_them(tmp_path):
    """Long prompts are cut once for both replies (as training does), so `llmctl eval --task prefs` on the
    held-out pairs reproduces the run's own val_accuracy; scoring each reply alone would cut differently."""
    from llmctl.eval.runner import EvalConfig, run_eval

    ck = tiny_checkpoint(tmp_path / "ck")
    rows = [
        {**r, "prompt": "please " * (8 + i % 5) + r["prompt"], "rejected": r["rejected"] + " very" * (i % 4)}
        for i, r in enumerate(synthetic_prefs(120))
    ]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    cfg = RewardConfig(max_len=40, val_fraction=0.25)
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch, cfg.train.lr = 6, 8, 8, 3e-3
    cfg.train.warmup_steps, cfg.train.eval_every, cfg.train.log_every = 1, 6, 100
    summary = run_reward(data, ck, tmp_path / "rm", cfg)
    assert summary["data"]["truncated"] > 20
    ecfg = EvalConfig(tasks=["prefs"], batch_size=5, progress=False)
    ecfg.prefs.data = str(data)
    got = {r["metric"]: r for r in run_eval(tmp_path / "rm", tmp_path / "res", ecfg)["stats"]["results"]}
    assert got["accuracy"]["n"] == summary["data"]["val"]
    assert got["accuracy"]["value"] == pytest.approx(summary["val_accuracy"], abs=1e-9)
    assert got["mean_margin"]["value"] == pytest.approx(summary["val_margin"], abs=1e-5)
    scorer = load_reward_model(tmp_path / "rm")
    assert scorer.max_len == 40  # the run's max_len, not the model's context
    key = lambda r: (to_messages(r["prompt"]), r["chosen"], r["rejected"])  # noqa: E731
    val = [r for r in rows if split_of(r, key(r), 0.25, cfg.train.seed) == "val"]
    alone = scorer.score([r["prompt"] for r in val], [r["chosen"] for r in val])
    paired, _ = scorer.score_pairs([r["prompt"] for r in val], [r["chosen"] for r in val], [r["rejected"] for r in val])
    assert any(abs(a - b) > 1e-4 for a, b in zip(alone, paired))  # the prompt cut differs for these pairs
