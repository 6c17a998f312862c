"""The modern small-model recipe's switches (QK-norm, ReLU^2, zero-init projections, logit soft-cap,
untied embeddings with their own learning rate): each forward against a computation written out
here from the definitions, old checkpoints and run directories unchanged, `--recipe` resolution."""

import json
import math

import pytest
import torch
from pretrain_helpers import make_tokenizer, write_tokens
from typer.testing import CliRunner

from llmctl import config as C
from llmctl.cli import app
from llmctl.errors import UsageError
from llmctl.model.checkpoint import load_checkpoint, save_checkpoint
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.train.loop import TrainConfig, build_optimizer
from llmctl.train.optim import set_schedule
from llmctl.train.pretrain import PretrainConfig, model_config, pretrain, recipe_flags
from llmctl.train.run_dir import run_state

EPS = 1e-5


def rms(x, w):
    return w * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def rope(x, pos):
    """Half-split rotary embedding of x (T, H, D) at integer positions, from the formula."""
    d = x.shape[-1]
    freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[:, None].double() * freq  # (T, D/2)
    c, s = ang.cos()[:, None, :], ang.sin()[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def reference_logits(m: Transformer, ids: torch.Tensor) -> torch.Tensor:
    """The decoder written out in float64 for one sequence: per-head q/k RMSNorm before RoPE,
    causal softmax attention, SwiGLU or relu(x)^2, final norm, head, cap * tanh(z / cap)."""
    c = m.cfg
    P = {k: v.detach().double() for k, v in m.state_dict().items()}
    t = ids.shape[0]
    pos = torch.arange(t)
    x = P["embed_tokens.weight"][ids]
    for i in range(c.n_layer):
        L = f"layers.{i}."
        h = rms(x, P[L + "input_layernorm.weight"])
        q = (h @ P[L + "self_attn.q_proj.weight"].T).view(t, c.n_head, c.head_dim)
        k = (h @ P[L + "self_attn.k_proj.weight"].T).view(t, c.n_kv_head, c.head_dim)
        v = (h @ P[L + "self_attn.v_proj.weight"].T).view(t, c.n_kv_head, c.head_dim)
        if c.qk_norm:
            q, k = rms(q, P[L + "self_attn.q_norm.weight"]), rms(k, P[L + "self_attn.k_norm.weight"])
        q, k = rope(q, pos), rope(k, pos)
        rep = c.n_head // c.n_kv_head  # grouped-query: kv head j serves query heads j*rep .. j*rep+rep-1
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(c.head_dim)
        att = att.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        y = torch.einsum("hqk,khd->qhd", att, v).reshape(t, -1)
        x = x + y @ P[L + "self_attn.o_proj.weight"].T
        h = rms(x, P[L + "post_attention_layernorm.weight"])
        up = h @ P[L + "mlp.up_proj.weight"].T
        if c.mlp_act == "relu2":
            a = torch.clamp(up, min=0) ** 2
        else:
            g = h @ P[L + "mlp.gate_proj.weight"].T
            a = g * torch.sigmoid(g) * up
        x = x + a @ P[L + "mlp.down_proj.weight"].T
    head = P["embed_tokens.weight"] if c.tie_embeddings else P["lm_head.weight"]
    z = rms(x, P["norm.weight"]) @ head.T
    return c.logit_softcap * torch.tanh(z / c.logit_softcap) if c.logit_softcap else z


def perturbed(cfg: ModelConfig) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(cfg)
    for p in m.parameters():  # off the init's ones and zeros, so that every tensor matters
        p.data.add_(0.3 * torch.randn_like(p))
    return m.eval()


SWITCHES = {
    "baseline": {},
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(mlp_act="relu2"),
    "softcap": dict(logit_softcap=2.0),  # small, so the cap bends the logits
    "all": dict(qk_norm=True, mlp_act="relu2", logit_softcap=3.0, zero_init_proj=True, tie_embeddings=False),
}


@pytest.mark.parametrize("name", list(SWITCHES))
def test_forward_matches_the_written_out_model(name):
    cfg = ModelConfig(vocab_size=61, n_layer=2, n_head=4, n_kv_head=2, d_model=32, **SWITCHES[name])
    m = perturbed(cfg)
    ids = torch.randint(0, 61, (12,), generator=torch.Generator().manual_seed(1))
    ours = m(ids[None])[0].double()
    ref = reference_logits(m, ids)
    assert (ours - ref).abs().max().item() < 1e-4
    cap = cfg.logit_softcap
    if cap:
        m.cfg.logit_softcap = 0.0
        raw = m(ids[None])[0].double()
        m.cfg.logit_softcap = cap
        assert ours.abs().max().item() < cap < raw.abs().max().item()  # the cap bends these logits
        assert torch.allclose(ours, cap * torch.tanh(raw / cap), atol=1e-6)


def test_relu2_mlp_shape_and_parameter_count():
    swiglu = ModelConfig(vocab_size=64, d_model=48)
    relu2 = ModelConfig(vocab_size=64, d_model=48, mlp_act="relu2")
    assert relu2.d_ff == 4 * 48 and not hasattr(Transformer(relu2).layers[0].mlp, "gate_proj")
    n = lambda c: sum(p.numel() for p in Transformer(c).layers[0].mlp.parameters())  # noqa: E731
    assert n(relu2) == 2 * 48 * 192 and abs(n(relu2) - n(swiglu)) / n(swiglu) < 0.02


def test_zero_init_projections_make_each_block_the_identity():
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layer=3, zero_init_proj=True, tie_embeddings=False)
    torch.manual_seed(0)
    m = Transformer(cfg).eval()
    for block in m.layers:
        assert block.self_attn.o_proj.weight.abs().sum() == 0 and block.mlp.down_proj.weight.abs().sum() == 0
        assert block.self_attn.q_proj.weight.std() > 0.01  # the rest keeps its normal init
    ids = torch.randint(0, 50, (2, 7))
    expect = m.lm_head(m.norm(m.embed_tokens(ids)))
    assert torch.allclose(m(ids), expect, atol=1e-6)
    ref = Transformer(ModelConfig(vocab_size=50, d_model=32, n_layer=3))
    assert ref.layers[0].self_attn.o_proj.weight.abs().sum() > 0  # off by default


def test_bad_switch_values_are_one_line_errors():
    with pytest.raises(UsageError, match="unknown mlp_act 'gelu'"):
        ModelConfig(mlp_act="gelu")
    with pytest.raises(UsageError, match="logit_softcap"):
        ModelConfig(logit_softcap=-1.0)
    with pytest.raises(UsageError, match="relu2 is for dense models"):
        ModelConfig(mlp_act="relu2", n_experts=4)
    with pytest.raises(UsageError, match="embed_lr must be positive"):
        TrainConfig(embed_lr=0.0)


def test_old_checkpoint_without_the_switches_loads_unchanged(tmp_path):
    cfg = ModelConfig(vocab_size=50, d_model=32)
    m = perturbed(cfg)
    save_checkpoint(tmp_path / "ck", m, cfg)
    conf = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert conf["mlp_act"] == "swiglu" and conf["logit_softcap"] == 0.0  # recorded in new checkpoints
    for k in ("mlp_act", "zero_init_proj", "logit_softcap"):
        conf.pop(k)
    (tmp_path / "ck" / "config.json").write_text(json.dumps(conf))
    back, bcfg, _, _ = load_checkpoint(tmp_path / "ck")
    ids = torch.randint(0, 50, (1, 9))
    assert bcfg.mlp_act == "swiglu" and torch.equal(back(ids), m(ids))


def test_run_state_of_an_unset_recipe_is_the_old_one():
    """A run recorded before these options existed resumes: unset switches are not in its state."""
    state = run_state("pretrain", C.load(PretrainConfig), [])
    for k in ("qk_norm", "mlp_act", "zero_init_proj", "logit_softcap"):
        assert k not in state["config"]["model"]
    assert "embed_lr" not in state["config"]["train"] and "head_lr" not in state["config"]["train"]
    on = run_state("pretrain", C.load(PretrainConfig, flags={"model.qk_norm": True, "train.embed_lr": 0.1}), [])
    assert on["config"]["model"]["qk_norm"] is True and on["config"]["train"]["embed_lr"] == 0.1


def test_recipe_sets_keys_below_explicit_options():
    runner = CliRunner()
    args = ["pretrain", "toks", "-t", "tok", "-o", "run", "--recipe", "modern", "--print-config"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    resolved = C.load(PretrainConfig, flags={"model.qk_norm": None})
    assert "optimizer: muon" in r.output and resolved.train.optimizer == "adamw"
    r2 = runner.invoke(app, [*args, "--optimizer", "adamw", "--set", "model.logit_softcap=7"])
    assert "optimizer: adamw" in r2.output and "logit_softcap: 7" in r2.output
    r3 = runner.invoke(app, ["pretrain", "toks", "-t", "tok", "-o", "run", "--recipe", "nope", "--print-config"])
    assert isinstance(r3.exception, UsageError) and "unknown recipe 'nope'" in str(r3.exception)


def test_pretrain_model_config_takes_the_switches():
    cfg = C.load(
        PretrainConfig,
        flags={
            "model.qk_norm": True,
            "model.mlp_act": "relu2",
            "model.logit_softcap": 15.0,
            "model.tie_embeddings": False,
        },
    )
    mc = model_config(cfg, 100)
    assert (mc.qk_norm, mc.mlp_act, mc.logit_softcap, mc.tie_embeddings, mc.zero_init_proj) == (
        True,
        "relu2",
        15.0,
        False,
        False,
    )


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_embedding_and_head_take_their_own_learning_rates(optimizer):
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=40, d_model=32, tie_embeddings=False))
    cfg = TrainConfig(optimizer=optimizer, lr=1e-3, embed_lr=0.05, head_lr=0.004, weight_decay=0.0)
    opt = build_optimizer(m, cfg)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    set_schedule(opt, 10, 0.5e-3, cfg)  # half the peak: every group at half its own peak
    opt.step()
    after = dict(m.named_parameters())
    # Adam's first step moves every element by about its learning rate
    for name, lr in (("embed_tokens.weight", 0.025), ("lm_head.weight", 0.002), ("norm.weight", 0.5e-3)):
        step = (after[name] - before[name]).abs()
        assert torch.allclose(step, torch.full_like(step, lr), rtol=1e-3), name
    # unset, the groups are the ones runs had before (their saved optimizer states still load)
    plain = build_optimizer(m, TrainConfig(optimizer=optimizer))
    assert len(plain.param_groups) == (2 if optimizer == "adamw" else 3)


def test_modern_recipe_trains_records_its_switches_and_resumes(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    write_tokens(tmp_path / "tokens", tok)
    small = {"seq_len": 32, "batch_tokens": 128, "train.micro_batch": 4, "train.steps": 6, "model.d_model": 32}
    small |= {"train.eval_every": 3, "train.ckpt_every": 3, "train.warmup_steps": 1}
    cfg = lambda **f: C.load(PretrainConfig, flags={**small, **f}, base=recipe_flags("modern"))  # noqa: E731
    pretrain(tmp_path / "tokens", tmp_path / "tok", tmp_path / "a", cfg())
    pretrain(tmp_path / "tokens", tmp_path / "tok", tmp_path / "b", cfg(**{"train.stop_after": 3}))
    pretrain(tmp_path / "tokens", tmp_path / "tok", tmp_path / "b", cfg())
    la = [json.loads(x).get("loss") for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x).get("loss") for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == 8  # 6 steps and 2 evaluations; resumed exactly
    train_losses = [x for x in la if x is not None]
    assert train_losses[-1] < train_losses[0]
    _, mc, _, _ = load_checkpoint(tmp_path / "a")
    want = {k.split(".")[1]: v for k, v in recipe_flags("modern").items() if k.startswith("model.")}
    assert {k: getattr(mc, k) for k in want} == want
