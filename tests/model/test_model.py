"""The Transformer and checkpoint round trips, checked against independent computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from llmctl.errors import UsageError
from llmctl.model.checkpoint import load_checkpoint, load_train_state, save_checkpoint
from llmctl.model.transformer import (
    KVCache,
    ModelConfig,
    Transformer,
    cross_entropy,
    positions_from_doc_ids,
    preset_config,
    rope_cos_sin,
)


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=97, n_layer=2, n_head=4, d_model=32, **kw)).eval()


@pytest.mark.parametrize(
    "name,vocab,low,high",
    [
        ("tiny", 4096, 0.25e6, 0.45e6),
        ("10m", 8192, 9e6, 11e6),
        ("124m", 50304, 120e6, 128e6),
        ("350m", 50304, 340e6, 370e6),
    ],
)
def test_preset_sizes(name, vocab, low, high):
    with torch.device("meta"):
        m = Transformer(preset_config(name, vocab))
    assert low <= m.num_params() <= high
    c = m.cfg
    # independent count: embeddings + per layer (attention + SwiGLU + 2 norms) + final norm
    per_layer = (
        2 * c.d_model * c.d_model + 2 * c.d_model * c.n_kv_head * c.head_dim + 3 * c.d_model * c.d_ff + 2 * c.d_model
    )
    assert m.num_params() == vocab * c.d_model + c.n_layer * per_layer + c.d_model
    assert m.flops_per_token(1024) == 6 * m.num_params() + 12 * c.n_layer * c.d_model * 1024


def test_bad_shapes_are_usage_errors():
    with pytest.raises(UsageError, match="not a multiple"):
        ModelConfig(n_head=4, n_kv_head=3)
    with pytest.raises(UsageError, match="unknown model preset"):
        preset_config("huge", 100)


def test_no_biases_and_tied_embeddings():
    m = tiny()
    assert all("bias" not in n for n, _ in m.named_parameters())
    assert m.lm_head.weight is m.embed_tokens.weight
    untied = tiny(tie_embeddings=False)
    assert untied.num_params() == m.num_params() + 97 * 32


def test_causal_logits_do_not_see_the_future():
    m = tiny()
    x = torch.randint(0, 97, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 97
    assert torch.allclose(m(x)[:, :8], m(y)[:, :8], atol=1e-6)
    assert not torch.allclose(m(x)[:, 8:], m(y)[:, 8:], atol=1e-3)


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_packed_documents_equal_separate_documents(n_kv_head):
    m = tiny(n_kv_head=n_kv_head)
    a, b, c = torch.randint(0, 97, (5,)), torch.randint(0, 97, (4,)), torch.randint(0, 97, (3,))
    packed = torch.cat([a, b, c])[None]
    doc_ids = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3])
    out = m(packed, doc_ids=doc_ids)
    sep = torch.cat([m(a[None]), m(b[None]), m(c[None])], dim=1)
    assert torch.allclose(out, sep, atol=1e-5)
    # without doc_ids the second document does see the first
    assert not torch.allclose(m(packed)[:, 5:9], sep[:, 5:9], atol=1e-3)


def test_positions_restart_per_document():
    d = torch.tensor([[3, 3, 4, 4, 4, 5], [0, 0, 0, 0, 0, 0]])
    assert positions_from_doc_ids(d).tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]]


def test_rope_interpolation_divides_positions():
    p = torch.arange(0, 16).view(1, -1)
    cos2, sin2 = rope_cos_sin(2 * p, 8, 10000.0, 2.0)
    cos1, sin1 = rope_cos_sin(p, 8, 10000.0, 1.0)
    assert torch.allclose(cos2, cos1, atol=1e-6) and torch.allclose(sin2, sin1, atol=1e-6)
    # independent formula for one angle: position 3, frequency index 1, base 100
    cos, _ = rope_cos_sin(torch.tensor([[3]]), 8, 100.0, 1.0)
    assert math.isclose(cos[0, 0, 1].item(), math.cos(3 / 100 ** (2 / 8)), rel_tol=1e-6)


@pytest.mark.parametrize("n_kv_head", [4, 1])
def test_kv_cache_matches_full_forward(n_kv_head):
    m = tiny(n_kv_head=n_kv_head)
    x = torch.randint(0, 97, (2, 10))
    full = m(x)
    cache = KVCache(m.cfg, batch=2, max_len=16)
    parts = [m(x[:, :4], kv_cache=cache), m(x[:, 4:7], kv_cache=cache)]
    parts += [m(x[:, i : i + 1], kv_cache=cache) for i in range(7, 10)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    assert cache.pos == 10


def test_return_hidden_feeds_the_head():
    m = tiny()
    x = torch.randint(0, 97, (2, 6))
    logits, h = m(x, return_hidden=True)
    assert h.shape == (2, 6, 32)
    assert torch.allclose(logits, h @ m.embed_tokens.weight.T, atol=1e-5)
    assert torch.equal(m.hidden_states(x), h)


def test_cross_entropy_matches_manual_log_softmax():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    targets[0, 0] = -100
    lp = F.log_softmax(logits, dim=-1)
    keep = targets != -100
    manual = -lp[keep].gather(-1, targets[keep][:, None]).mean()
    assert torch.allclose(cross_entropy(logits, targets), manual, atol=1e-6)


def test_activation_checkpointing_gives_same_gradients():
    m = tiny()
    m.train()
    x = torch.randint(0, 97, (2, 8))
    cross_entropy(m(x[:, :-1]), x[:, 1:]).backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.activation_checkpointing = True
    cross_entropy(m(x[:, :-1]), x[:, 1:]).backward()
    for a, p in zip(g1, m.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


@pytest.mark.parametrize("tie", [True, False])
def test_checkpoint_round_trip(tmp_path, tie):
    m = tiny(tie_embeddings=tie, n_kv_head=2, rope_scale=2.0)
    state = {"step": 3, "rng": torch.get_rng_state(), "data": {"position": 12}}
    save_checkpoint(tmp_path / "ck", m, m.cfg, train_state=state, manifest={"stats": {"loss": 1.5}})
    m2, cfg, tok, manifest = load_checkpoint(tmp_path / "ck")
    assert cfg == m.cfg and tok is None and manifest["stats"]["loss"] == 1.5
    x = torch.randint(0, 97, (1, 7))
    assert torch.equal(m(x), m2(x))
    assert (m2.lm_head.weight is m2.embed_tokens.weight) == tie
    st = load_train_state(tmp_path / "ck")
    assert st["data"]["position"] == 12 and torch.equal(st["rng"], state["rng"])
    # re-saving over an existing checkpoint replaces it
    save_checkpoint(tmp_path / "ck", m2, cfg)
    assert not (tmp_path / "ck" / "train_state.pt").exists()


def test_load_checkpoint_refuses_non_checkpoints(tmp_path):
    with pytest.raises(UsageError, match="no such"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not an llmctl checkpoint"):
        load_checkpoint(tmp_path / "empty")
