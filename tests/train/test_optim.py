"""Optimizers (llmctl.train.optim) and trackers (llmctl.train.tracking): Muon's update against an
independent computation of torch's documented algorithm, exact resume, and metrics read back."""

import json
import math

import pytest
import torch
from pretrain_helpers import make_tokenizer, write_tokens
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from llmctl import config as C
from llmctl.errors import UsageError
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.train.loop import TrainConfig, build_optimizer
from llmctl.train.optim import OPTIMIZERS, muon_momentum_at, set_schedule
from llmctl.train.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("opt")
    tok = make_tokenizer(root / "tok")
    write_tokens(root / "tokens", tok)
    return root


def small_cfg(**flags) -> PretrainConfig:
    base = {
        "seq_len": 32,
        "batch_tokens": 256,
        "train.micro_batch": 4,
        "train.steps": 6,
        "train.eval_every": 3,
        "train.ckpt_every": 3,
        "train.warmup_steps": 2,
        "train.lr": 3e-3,
        "model.d_model": 32,
    }
    return C.load(PretrainConfig, None, None, {**base, **flags})


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """torch.optim.Muon's documented orthogonalization, written out: bf16, the wide orientation,
    Frobenius-normalized, then X <- aX + (bA + cA^2)X with A = XX^T, five times."""
    a, b, c = 3.4445, -4.775, 2.0315
    x = g.bfloat16()
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(g.dtype)


def test_muon_step_equals_the_documented_update():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=50, d_model=32, n_head=4, n_layer=2))
    cfg = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1)
    opt = build_optimizer(m, cfg)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    set_schedule(opt, 0, cfg.lr, cfg)
    opt.step()
    mu = cfg.muon_momentum_start  # step 0 of the momentum warmup
    for name in ("layers.0.self_attn.q_proj.weight", "layers.1.mlp.down_proj.weight", "layers.0.mlp.up_proj.weight"):
        w0, g = before[name], grads[name]
        buf = (1 - mu) * g  # torch keeps the momentum as an EMA: B <- mu B + (1 - mu) g, from B = 0
        update = newton_schulz(g + mu * (buf - g))  # nesterov: g lerped towards B by mu
        rows, cols = w0.shape
        lr = cfg.muon_lr * math.sqrt(max(1.0, rows / cols))
        expected = w0 * (1 - cfg.muon_lr * cfg.weight_decay) - lr * update
        got = dict(m.named_parameters())[name].detach()
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), name
    # the embeddings, norms and (untied) head stay with AdamW: its first step moves each weight by about lr
    groups = opt.param_groups
    assert groups[0]["lr"] == pytest.approx(cfg.muon_lr) and groups[1]["lr"] == cfg.lr
    muon_ids = {id(p) for p in groups[0]["params"]}
    assert id(m.embed_tokens.weight) not in muon_ids and id(m.norm.weight) not in muon_ids
    assert all(p.ndim == 2 for p in groups[0]["params"])
    step = (dict(m.named_parameters())["norm.weight"] - before["norm.weight"]).abs()
    assert torch.allclose(step, torch.full_like(step, cfg.lr), rtol=1e-3)


def test_muon_momentum_warms_up_linearly():
    cfg = TrainConfig(optimizer="muon", muon_momentum_start=0.85, muon_momentum=0.95, muon_momentum_warmup=100)
    assert muon_momentum_at(0, cfg) == pytest.approx(0.85)
    assert muon_momentum_at(50, cfg) == pytest.approx(0.90)
    assert muon_momentum_at(100, cfg) == muon_momentum_at(1000, cfg) == pytest.approx(0.95)


def test_unknown_optimizer_and_tracker_are_one_line_errors():
    with pytest.raises(UsageError, match="unknown optimizer 'sgd'; choose one of adamw, muon"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(UsageError, match="unknown --log-to 'mlflow'"):
        TrainConfig(log_to="tensorboard,mlflow")
    assert set(OPTIMIZERS) == {"adamw", "muon"}


def losses(run_dir):
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def test_muon_resume_is_exact_and_learns(data, tmp_path):
    flags = {"train.optimizer": "muon", "train.muon_momentum_warmup": 4}
    straight = pretrain(data / "tokens", data / "tok", tmp_path / "a", small_cfg(**flags))
    pretrain(data / "tokens", data / "tok", tmp_path / "b", small_cfg(**flags, **{"train.stop_after": 3}))
    rest = pretrain(data / "tokens", data / "tok", tmp_path / "b", small_cfg(**flags))
    assert rest["start_step"] == 3 and losses(tmp_path / "a") == losses(tmp_path / "b")  # bit-exact on CPU
    la = losses(tmp_path / "a")
    assert la[-1] < la[0] - 0.2 and straight["val_loss"] < la[0]


@pytest.mark.slow
def test_trackers_get_the_metrics_jsonl_records(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    pretrain(data / "tokens", data / "tok", run, small_cfg(**{"train.log_to": "tensorboard,wandb"}))
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tb_loss = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert tb_loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in recs if "loss" in r]
    tb_val = [(e.step, e.value) for e in acc.Scalars("val_loss")]
    assert tb_val == [(r["step"], pytest.approx(r["val_loss"], rel=1e-6)) for r in recs if "val_loss" in r]
    assert "config" in acc.Tags()["tensors"] or acc.Tags().get("tensors")
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0


def test_adamw_is_torchs_fused_kernel_with_the_plain_update():
    """On plain CPU tensors the adamw optimizer runs torch's fused kernel; five steps move every weight
    as the per-tensor AdamW with the same groups does, up to float rounding."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=40, n_layer=1, n_head=2, d_model=16, max_seq_len=16))
    ref = Transformer(m.cfg)
    ref.load_state_dict(m.state_dict())
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    ours = build_optimizer(m, cfg)
    assert [o.defaults["fused"] for o in ours.optimizers] == [True]
    plain = torch.optim.AdamW(
        [
            {"params": [p for n, p in ref.named_parameters() if p.ndim >= 2 and "embed" not in n], "weight_decay": 0.1},
            {"params": [p for n, p in ref.named_parameters() if p.ndim < 2 or "embed" in n], "weight_decay": 0.0},
        ],
        lr=1e-2,
        betas=(cfg.beta1, cfg.beta2),
        eps=1e-8,
        foreach=False,
    )
    x = torch.randint(0, 40, (3, 16))
    for _ in range(5):
        for model, opt in ((m, ours), (ref, plain)):
            opt.zero_grad()
            model(x).logsumexp(-1).mean().backward()
            opt.step()
    for (n, a), b in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=n)
