"""Mixture-of-Experts: router losses, dispatch, dense equivalence, capacity, balance on real tokens, export.

Independent computations: the aux losses are recomputed in numpy (and against transformers'
own `load_balancing_loss_func`); the dispatch is compared with a per-token reference loop; the
export with transformers' MixtralForCausalLM / Qwen2MoeForCausalLM.
"""

import json

import numpy as np
import pytest
import torch
from moe_helpers import one_thread  # noqa: F401  (autouse fixture)
from pretrain_helpers import make_tokenizer, stories, write_tokens
from transformers import AutoModelForCausalLM

from llmctl import config as C
from llmctl.errors import UsageError
from llmctl.export.hf import export_hf
from llmctl.model.checkpoint import save_checkpoint
from llmctl.model.generate import generate
from llmctl.model.moe import MoE, load_balancing_loss, router_losses, z_loss
from llmctl.model.transformer import ModelConfig, Transformer, preset_config
from llmctl.train.pretrain import PretrainConfig, pretrain


def np_aux(logits: np.ndarray, k: int) -> tuple[float, float]:
    """Switch/Mixtral balance loss and ST-MoE z-loss, written out by hand."""
    n, e = logits.shape
    m = logits.max(1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(1, keepdims=True)))[:, 0]
    probs = np.exp(logits - lse[:, None])
    chosen = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    f = np.array([(chosen == i).sum() for i in range(e)]) / (n * k)
    return float(e * (f * probs.mean(0)).sum()), float((lse**2).mean())


def test_aux_losses_equal_independent_computations():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(0)
    logits = torch.randn(64, 6) * 3
    idx = logits.softmax(-1).topk(2, dim=-1).indices
    lb, z = np_aux(logits.double().numpy(), 2)
    assert load_balancing_loss(logits, idx, 6).item() == pytest.approx(lb, rel=1e-5)
    assert z_loss(logits).item() == pytest.approx(z, rel=1e-5)
    # transformers counts f per top-k slot (so its loss is k x ours for the same routing)
    assert load_balancing_loss_func((logits,), 6, 2).item() == pytest.approx(2 * lb, rel=1e-5)
    # a balanced router (all logits equal): lb is exactly 1, z is log(E)^2
    flat = torch.zeros(60, 6)
    assert load_balancing_loss(flat, torch.arange(60).remainder(6)[:, None], 6).item() == pytest.approx(1.0)
    assert z_loss(flat).item() == pytest.approx(np.log(6) ** 2, rel=1e-6)


def test_model_reports_the_aux_losses_of_its_router_logits():
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=100, n_layer=2, d_model=32, n_experts=4, moe_top_k=2, moe_lb_coef=0.3, moe_z_coef=0.02)
    m = Transformer(cfg).train()
    seen = []
    for b in m.layers:
        b.mlp.gate.register_forward_hook(lambda mod, inp, out: seen.append(out.detach().double().numpy()))
    m(torch.randint(0, 100, (2, 16)))
    aux, metrics = router_losses(m)
    per_layer = [np_aux(z, 2) for z in seen]
    assert metrics["moe_lb_loss"].item() == pytest.approx(np.mean([p[0] for p in per_layer]), rel=1e-5)
    assert metrics["moe_z_loss"].item() == pytest.approx(np.mean([p[1] for p in per_layer]), rel=1e-5)
    assert aux.item() == pytest.approx(np.mean([0.3 * a + 0.02 * b for a, b in per_layer]), rel=1e-5)
    assert sum(metrics[f"moe_load/L0/e{e}"] for e in range(4)) == pytest.approx(1.0)
    assert router_losses(m) == (None, {})  # taken once; an eval forward records nothing
    with torch.no_grad():
        m(torch.randint(0, 100, (2, 16)))
    assert router_losses(m) == (None, {})


def test_one_expert_top1_equals_the_dense_model():
    torch.manual_seed(0)
    dense_cfg = ModelConfig(vocab_size=200, n_layer=2, n_head=4, d_model=64)
    moe_cfg = ModelConfig(vocab_size=200, n_layer=2, n_head=4, d_model=64, n_experts=1, moe_top_k=1)
    dense, moe = Transformer(dense_cfg).eval(), Transformer(moe_cfg).eval()
    state = dense.state_dict()
    for i in range(2):
        for p in ("gate_proj", "up_proj", "down_proj"):
            state[f"layers.{i}.mlp.experts.{p}"] = state.pop(f"layers.{i}.mlp.{p}.weight")[None]
        state[f"layers.{i}.mlp.gate.weight"] = torch.randn(1, 64)  # any router: softmax over one expert is 1
    moe.load_state_dict(state)
    ids = torch.randint(0, 200, (2, 40))
    with torch.no_grad():
        assert (dense(ids) - moe(ids)).abs().max().item() < 1e-5


def reference_moe(m: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: sum over its top-k experts of weight x SwiGLU_e(x), plus the gated shared expert."""
    out = []
    for t in x:
        p = (m.gate.weight @ t).softmax(-1)
        w, idx = p.topk(m.k)
        w = w / w.sum() if m.norm_topk else w
        y = torch.zeros_like(t)
        for wj, e in zip(w, idx):
            h = torch.nn.functional.silu(m.experts.gate_proj[e] @ t) * (m.experts.up_proj[e] @ t)
            y = y + wj * (m.experts.down_proj[e] @ h)
        if hasattr(m, "shared_expert"):
            y = y + torch.sigmoid(m.shared_expert_gate.weight @ t)[0] * m.shared_expert(t)
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("norm_topk,shared", [(True, 0), (False, 2)])
def test_sorted_dispatch_equals_per_token_reference_in_both_implementations(norm_topk, shared):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=10,
        d_model=32,
        n_experts=6,
        moe_top_k=2,
        moe_d_ff=24,
        n_shared_experts=shared,
        moe_norm_topk=norm_topk,
    )
    m = MoE(cfg).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    x = torch.randn(2, 9, 32)
    ref = reference_moe(m, x.reshape(-1, 32)).reshape(x.shape)
    grads = {}
    for impl in ("loop", "grouped"):  # grouped_mm has a CPU kernel in torch 2.13: the CUDA code path, tested here
        m.experts.impl = impl
        m.zero_grad()
        y = m(x)
        assert (y - ref).abs().max().item() < 1e-5, impl
        y.square().sum().backward()
        grads[impl] = [p.grad.clone() for p in m.parameters()]
    for a, b in zip(*grads.values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_capacity_drops_assignments_over_capacity_and_counts_them():
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=10,
        d_model=16,
        n_experts=4,
        moe_top_k=2,
        moe_d_ff=8,
        moe_capacity_factor=1.0,
        moe_lb_coef=0.0,
        moe_z_coef=0.0,
    )
    m = MoE(cfg).train()
    with torch.no_grad():
        m.gate.weight.zero_()
        m.gate.weight[0, 0], m.gate.weight[1, 0] = 2.0, 1.0  # x[:, 0] > 0: every token picks experts 0 and 1
    x = torch.randn(1, 12, 16)
    x[..., 0] = x[..., 0].abs() + 1
    y = m(x)[0]
    # capacity ceil(1.0 * 12 * 2 / 4) = 6 per expert: tokens 0-5 are served, tokens 6-11 dropped (both slots)
    ref = reference_moe(m, x[0])
    assert torch.allclose(y[:6], ref[:6], atol=1e-6) and y[6:].abs().max().item() == 0
    _, metrics = router_losses(m)
    assert metrics["moe_dropped"].item() == pytest.approx(0.5)
    m.capacity = 0.0  # dropless: nothing dropped
    assert torch.allclose(m(x)[0], ref, atol=1e-6) and router_losses(m)[1]["moe_dropped"].item() == 0


def test_bad_moe_options_are_usage_errors():
    with pytest.raises(UsageError, match="moe_top_k"):
        ModelConfig(n_experts=4, moe_top_k=5)
    with pytest.raises(UsageError, match="moe_impl"):
        ModelConfig(n_experts=4, moe_impl="fast")
    assert preset_config("moe-10m", 8192).n_experts == 8


def test_flops_count_active_parameters():
    cfg = preset_config("moe-tiny", 400)
    dense = Transformer(preset_config("tiny", 400))
    m = Transformer(cfg)
    routed = 3 * cfg.d_model * cfg.moe_d_ff
    assert m.num_params() - dense.num_params() == cfg.n_layer * (
        cfg.n_experts * routed + cfg.n_experts * cfg.d_model - 3 * cfg.d_model * cfg.d_ff
    )
    # top-2 of width 88 = one dense SwiGLU of width 176: the same FLOPs per token, plus the router's
    assert m.flops_per_token(256) - dense.flops_per_token(256) == 6 * cfg.n_layer * cfg.n_experts * cfg.d_model


def test_balancing_loss_keeps_real_token_routing_balanced(tmp_path):
    """60 steps on TinyStories tokens, 8 experts top-2: without the balancing loss one expert takes
    every token's first slot (imbalance max/mean -> 4.0, its ceiling for top-2 of 8); with the
    default coefficient 0.01 the imbalance stays under 2.0 over the last 20 steps."""
    tok = make_tokenizer(tmp_path / "tok")
    write_tokens(tmp_path / "tokens", tok)
    flags = {
        "seq_len": 64,
        "batch_tokens": 512,
        "train.micro_batch": 8,
        "train.steps": 60,
        "train.eval_every": 0,
        "train.ckpt_every": 0,
        "train.lr": 1e-3,
        "train.warmup_steps": 2,
        "train.log_every": 1000,
        "model.preset": "moe-tiny",
        "model.n_layer": 1,
        "model.d_model": 32,
        "model.moe_d_ff": 32,
        "model.moe_z_coef": 0.0,
    }
    out = {}
    for lb in (0.0, 0.01):
        pretrain(
            tmp_path / "tokens",
            tmp_path / "tok",
            tmp_path / f"lb{lb}",
            C.load(PretrainConfig, None, None, {**flags, "model.moe_lb_coef": lb}),
        )
        recs = [json.loads(ln) for ln in (tmp_path / f"lb{lb}" / "metrics.jsonl").read_text().splitlines()]
        out[lb] = [r["moe_imbalance"] for r in recs]
    assert out[0.0][0] < 2.0 and min(out[0.0][-20:]) > 3.5, out[0.0]  # starts balanced, collapses
    assert max(out[0.01][-20:]) < 2.0, out[0.01]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


@pytest.mark.parametrize(
    "shape,cls",
    [
        (dict(), "MixtralForCausalLM"),
        (
            dict(n_layer=3, moe_every=2, n_shared_experts=2, moe_norm_topk=False, tie_embeddings=False, n_kv_head=2),
            "Qwen2MoeForCausalLM",
        ),
    ],
)
def test_export_logits_and_greedy_text_match_transformers(tmp_path, tok, shape, cls):
    torch.manual_seed(0)
    spec = {**dict(n_layer=2, n_head=4, d_model=64, max_seq_len=128, n_experts=4, moe_top_k=2, moe_d_ff=48), **shape}
    cfg = ModelConfig(vocab_size=tok.vocab_size, **spec)
    m = Transformer(cfg)
    for p in m.parameters():  # move off the init so every tensor (router included) matters
        p.data.add_(0.05 * torch.randn_like(p))
    save_checkpoint(tmp_path / "ck", m, cfg, tokenizer_dir=tok.path)
    export_hf(tmp_path / "ck", tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [cls]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == cls
    ids = tok.encode(stories(1)[0])[:60]
    with torch.no_grad():
        assert (m.eval()(torch.tensor([ids])) - hf(torch.tensor([ids])).logits).abs().max().item() < 1e-4
        ours = generate(m, ids[:10], max_new_tokens=20, temperature=0)
        theirs = hf.generate(
            torch.tensor([ids[:10]]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_id
        )[0, 10:].tolist()
    assert len(ours) == 20 and tok.decode(ours) == tok.decode(theirs)


def test_a_failing_grouped_mm_falls_back_to_the_loop(monkeypatch):
    import llmctl.model.moe as moe_mod

    torch.manual_seed(0)
    m = MoE(ModelConfig(vocab_size=10, d_model=16, n_experts=4, moe_d_ff=8)).eval()
    x = torch.randn(10, 16)
    m.experts.impl = "loop"
    expected = m(x)

    def broken(*a, **k):
        raise RuntimeError("grouped_mm: unsupported on this device")

    monkeypatch.setattr(torch.nn.functional, "grouped_mm", broken)
    monkeypatch.setattr(moe_mod, "_grouped_failed", False)
    m.experts.impl = "auto"
    with pytest.warns(UserWarning, match="per-expert loop"):
        assert torch.equal(m(x), expected)
    assert moe_mod._grouped_failed and torch.equal(m(x), expected)  # no second attempt, no second warning


def test_activation_checkpointing_gives_the_same_aux_loss_and_gradients():
    from llmctl.model.moe import discard_records
    from llmctl.model.transformer import cross_entropy

    torch.manual_seed(0)
    m = Transformer(preset_config("moe-tiny", 300)).train()
    x = torch.randint(0, 300, (2, 32))
    out = []
    for ac in (False, True):
        m.activation_checkpointing = ac
        m.zero_grad()
        discard_records(m)  # as the loop does before each forward: a recompute's records never count
        y = m(x)
        aux, _ = router_losses(m)
        (cross_entropy(y, x) + aux).backward()
        out.append((aux.item(), [p.grad.clone() for p in m.parameters()]))
    assert out[0][0] == out[1][0]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out[0][1], out[1][1]))
