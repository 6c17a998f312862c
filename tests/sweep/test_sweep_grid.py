"""The IsoFLOP grid: each shape's FLOPs per token equal an independent count, and each point trains
for its budget's FLOPs within 2%, with the model pretrain builds for it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from llmctl.config import from_dict
from llmctl.errors import UsageError
from llmctl.model.transformer import Transformer
from llmctl.sweep.grid import (
    GridConfig,
    Shape,
    candidate_shapes,
    expected_optimum,
    model_config,
    parse_sizes,
    plan_grid,
    shape_flops,
)
from llmctl.sweep.run import SweepConfig, pretrain_config
from llmctl.train.pretrain import PretrainConfig
from llmctl.train.pretrain import model_config as pretrain_model_config


def explicit_attention(q, k, v, attn_mask=None, is_causal=False, **kw):
    """Attention as plain matmuls (which FlopCounterMode counts; CPU's fused SDPA kernel it does not)."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    t = q.size(-2)
    if is_causal:
        s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf"))
    return s.softmax(-1) @ v


@pytest.mark.parametrize("shape", [Shape(1, 16, 1), Shape(2, 64, 4), Shape(3, 96, 6)])
def test_flops_per_token_equal_an_independent_count(shape, monkeypatch):
    vocab, seq, batch = 512, 64, 2
    n, fpt = shape_flops(shape, vocab, seq)
    torch.manual_seed(0)
    model = Transformer(model_config(shape, vocab, seq))
    assert fpt == model.flops_per_token(seq)  # the figure the MFU uses
    monkeypatch.setattr(F, "scaled_dot_product_attention", explicit_attention)
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, vocab, (batch, seq))).sum().backward()
    counted = counter.get_total_flops() / (batch * seq)  # every matmul of forward + backward, attention included
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    # the estimate counts 6 FLOPs per norm weight too (as PaLM / nanoGPT count all non-embedding parameters)
    assert fpt == counted + 6 * norms
    assert n == model.num_params()  # N: with tied embeddings, every parameter


@pytest.mark.parametrize(
    "budgets,sizes", [([1e10, 3e10, 1e11], []), ([3e11, 1e12, 1e14], []), ([4e9, 1e10], ["1x16", "1x32", "2x64"])]
)
def test_points_sit_at_their_budget_within_2_percent(budgets, sizes):
    cfg = SweepConfig(budgets=budgets, sizes=sizes)
    points = plan_grid(cfg, 512)
    assert {p.budget for p in points} == set(budgets)
    for p in points:
        assert abs(p.flops / p.budget - 1) < 0.02, p
        assert p.steps >= 25 and p.tokens == p.steps * p.batch_tokens
        # the run pretrain makes of this point trains this shape on these tokens
        pc = from_dict(PretrainConfig, pretrain_config(p, cfg))
        mc = pretrain_model_config(pc, 512)
        assert (mc.n_layer, mc.d_model, mc.n_head) == (p.n_layer, p.d_model, p.n_head)
        assert pc.train.steps * pc.batch_tokens == p.tokens
        assert Transformer(mc).flops_per_token(pc.seq_len) == p.flops_per_token
    if not sizes:  # the ladder's picks span ~0.3x..3x the expected optimum, smallest to largest
        ladder = [n for _, n, _ in candidate_shapes(cfg, 512)]
        for b in budgets:
            ns = sorted(p.params for p in points if p.budget == b)
            centre = expected_optimum(b, cfg.tokens_per_param)
            assert len(ns) >= 3
            if ladder[0] < 0.3 * centre and ladder[-1] > 3 * centre:
                assert 0.15 * centre < ns[0] < 0.5 * centre and 2 * centre < ns[-1] < 5 * centre


def test_untied_points_train_untied_models_with_the_same_n_and_f():
    """--untie-embeddings: pretrain builds a separate input embedding; N and F stay the tied shape's (a lookup)."""
    sizes = ["1x16", "1x48", "2x64"]
    tied, untied = (plan_grid(SweepConfig(budgets=[1e11], sizes=sizes, tie_embeddings=t), 512) for t in (True, False))
    assert [p.to_dict() for p in tied] == [p.to_dict() for p in untied]
    for p in untied:
        pc = from_dict(PretrainConfig, pretrain_config(p, SweepConfig(tie_embeddings=False)))
        model = Transformer(pretrain_model_config(pc, 512))
        assert model.lm_head.weight is not model.embed_tokens.weight
        assert model.flops_per_token(pc.seq_len) == p.flops_per_token
        assert model.num_params(non_embedding=True) == p.params  # N: every parameter but the input embedding
        assert model.num_params() == p.params + 512 * p.d_model


def test_bad_sizes_and_budgets_are_usage_errors():
    with pytest.raises(UsageError, match="LAYERSxWIDTH"):
        parse_sizes(["2-64"])
    with pytest.raises(UsageError, match="heads of an even size"):
        parse_sizes(["2x64x5"])
    with pytest.raises(UsageError, match="positive number"):
        plan_grid(GridConfig(budgets=[-1.0]), 512)
    with pytest.raises(UsageError, match="only 16 step.*within 2%"):  # whole steps would miss 2e9 by 2.1%
        plan_grid(GridConfig(budgets=[2e9], sizes=["1x16", "2x64"]), 512)
