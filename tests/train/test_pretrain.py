"""Pretraining: packing, the shared loop (schedule, optimizer, NaN stop), exact resume, overfitting, CLI."""

import json
import math

import numpy as np
import pytest
import torch
from pretrain_helpers import make_tokenizer, write_token_rows, write_tokens
from typer.testing import CliRunner

from llmctl import config as C
from llmctl.cli import app
from llmctl.errors import UsageError
from llmctl.model.checkpoint import load_checkpoint, resolve_checkpoint
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.train.loop import TrainConfig, TrainingDiverged, build_optimizer, lr_at, train
from llmctl.train.pretrain import PackedBatches, PretrainConfig, lm_loss, pretrain


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt")
    tok = make_tokenizer(root / "tok")
    write_tokens(root / "tokens", tok)
    return root, tok


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


def losses(run_dir):
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r], [r["val_loss"] for r in recs if "val_loss" in r]


# ----------------------------------------------------------------------------- packing


def test_packing_covers_the_stream_and_marks_documents():
    docs = [[5, 6, 2], [7, 8, 9, 2], [10, 2], [11, 12, 13, 14, 2]]
    flat = np.array(sum(docs, []), dtype=np.int32)
    offsets = np.cumsum([0] + [len(d) for d in docs])
    pb = PackedBatches(flat, offsets, seq_len=4, micro_batch=1, seed=0, eos_id=2, shuffle=False)
    assert pb.windows_per_epoch == (len(flat) - 1) // 4
    b = next(pb)
    assert b["input_ids"].tolist() == [[5, 6, 2, 7]] and b["targets"].tolist() == [[6, 2, 7, 8]]
    assert b["doc_ids"].tolist() == [[0, 0, 0, 1]]  # a document ends with, and includes, its EOS
    # consecutive windows overlap by exactly one token: every target is the next input
    seen = torch.cat([pb.micro_batch(g)["input_ids"][0] for g in range(pb.windows_per_epoch)])
    assert seen.tolist() == flat[: 4 * pb.windows_per_epoch].tolist()


def test_shuffle_is_seeded_and_ranks_split_the_global_batches():
    flat = np.arange(1, 401, dtype=np.int32)
    offsets = np.arange(0, 401, 10)
    one = PackedBatches(flat, offsets, 8, 2, seed=3, eos_id=0)
    ranks = [PackedBatches(flat, offsets, 8, 2, seed=3, eos_id=0, rank=r, world=2) for r in range(2)]
    seq1 = [next(one)["input_ids"] for _ in range(40)]  # crosses into a second epoch
    seq2 = [next(ranks[i % 2])["input_ids"] for i in range(40)]
    assert all(torch.equal(a, b) for a, b in zip(seq1, seq2))
    other = PackedBatches(flat, offsets, 8, 2, seed=4, eos_id=0)
    assert not torch.equal(next(other)["input_ids"], seq1[0])
    # restoring the data position gives the very next batches
    again = PackedBatches(flat, offsets, 8, 2, seed=3, eos_id=0)
    again.load_state_dict(one.state_dict())
    assert torch.equal(next(again)["input_ids"], next(one)["input_ids"])


# ----------------------------------------------------------------------------- schedule, optimizer


def test_lr_schedules():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, cfg) == pytest.approx(0.1)
    wsd = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_at(79, wsd) == 1.0 and lr_at(89, wsd) == pytest.approx(0.5) and lr_at(99, wsd) == pytest.approx(0.0)
    with pytest.raises(UsageError, match="schedule"):
        TrainConfig(schedule="linear")


def test_no_weight_decay_on_norms_and_embeddings():
    m = Transformer(ModelConfig(vocab_size=50, d_model=16, n_head=2))
    opt = build_optimizer(m, TrainConfig(weight_decay=0.1))
    decay = {id(p) for p in opt.param_groups[0]["params"]}
    names = {id(p): n for n, p in m.named_parameters()}
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    assert all(p.ndim == 2 and "embed" not in names[id(p)] for p in opt.param_groups[0]["params"])
    assert id(m.embed_tokens.weight) not in decay and id(m.norm.weight) not in decay
    assert len(decay) + len(opt.param_groups[1]["params"]) == len(list(m.parameters()))


# ----------------------------------------------------------------------------- pretrain runs


def test_first_loss_equals_an_independent_cross_entropy(data, tmp_path):
    root, tok = data
    cfg = small_cfg(**{"train.steps": 1, "batch_tokens": 128})
    s = pretrain(root / "tokens", root / "tok", tmp_path / "run", cfg)
    # rebuild the initial model and the first batch by hand
    from llmctl.store.dataset import Dataset
    from llmctl.train.pretrain import load_token_split, model_config

    flat, offs = load_token_split(Dataset.open(root / "tokens"), "train")
    batch = next(PackedBatches(flat, offs, 32, 4, cfg.train.seed, tok.eos_id))
    torch.manual_seed(cfg.train.seed)
    m = Transformer(model_config(cfg, tok.vocab_size))
    logits = m(batch["input_ids"], doc_ids=batch["doc_ids"])
    manual = -torch.log_softmax(logits, -1).gather(-1, batch["targets"][..., None]).mean()
    assert s["loss"] == pytest.approx(manual.item(), abs=1e-5)
    assert abs(s["loss"] - math.log(tok.vocab_size)) < 0.5  # near uniform at init


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(data, tmp_path):
    root, _ = data
    straight = pretrain(root / "tokens", root / "tok", tmp_path / "a", small_cfg())
    part = pretrain(root / "tokens", root / "tok", tmp_path / "b", small_cfg(**{"train.stop_after": 3}))
    assert not part["finished"] and not (tmp_path / "b" / "_manifest.json").exists()
    with pytest.raises(UsageError, match="different config"):
        pretrain(root / "tokens", root / "tok", tmp_path / "b", small_cfg(**{"train.lr": 1e-3}))
    rest = pretrain(root / "tokens", root / "tok", tmp_path / "b", small_cfg())  # the same command resumes
    assert rest["start_step"] == 3 and rest["finished"]
    la, va = losses(tmp_path / "a")
    lb, vb = losses(tmp_path / "b")
    assert len(la) == len(lb) == 6 and la == lb and va == vb  # bit-exact on CPU
    tokens = lambda run: [  # noqa: E731
        json.loads(ln)["tokens"]
        for ln in (run / "metrics.jsonl").read_text().splitlines()
        if "tokens" in json.loads(ln)
    ]
    assert tokens(tmp_path / "b") == tokens(tmp_path / "a") == [256 * k for k in range(1, 7)]  # no jump back
    ma, _, _, _ = load_checkpoint(tmp_path / "a")
    mb, _, _, _ = load_checkpoint(tmp_path / "b")
    assert all(torch.equal(p, q) for p, q in zip(ma.parameters(), mb.parameters()))
    assert json.loads((tmp_path / "b" / "_manifest.json").read_text())["stats"]["loss"] == straight["loss"]


def test_overfits_one_batch():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=64, n_layer=2, n_head=4, d_model=64))
    flat = torch.randint(0, 64, (33,), dtype=torch.int32).numpy()
    batches = PackedBatches(flat, np.array([0, 33]), 32, 2, seed=0, eos_id=-1, doc_mask=False)  # one window
    cfg = TrainConfig(
        steps=80,
        batch_size=2,
        micro_batch=2,
        lr=1e-2,
        warmup_steps=5,
        eval_every=0,
        ckpt_every=0,
        log_every=1000,
        weight_decay=0.0,
    )
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        s = train(m, m.cfg, lm_loss, batches, cfg, d)
    assert s["loss"] < 0.05


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=64, d_model=16, n_head=2))
    flat = torch.randint(0, 64, (400,), dtype=torch.int32).numpy()
    batches = PackedBatches(flat, np.array([0, 400]), 16, 2, seed=0, eos_id=-1)
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss, _ = lm_loss(model, batch)
        return (loss * float("nan") if calls["n"] == 5 else loss), {}

    cfg = TrainConfig(steps=10, batch_size=2, micro_batch=2, warmup_steps=1, eval_every=0, ckpt_every=2, log_every=100)
    with pytest.raises(TrainingDiverged, match=r"loss nan .* at step 5.*step_0000004"):
        train(m, m.cfg, loss_fn, batches, cfg, tmp_path / "run")
    assert resolve_checkpoint(tmp_path / "run").name == "step_0000004"
    good, _, _, _ = load_checkpoint(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in good.parameters())


def test_vocab_mismatch_is_refused(data, tmp_path):
    root, _ = data
    pretrain(root / "tokens", root / "tok", tmp_path / "run", small_cfg(**{"train.steps": 1}))
    other = make_tokenizer(tmp_path / "tok2", vocab_size=440)
    with pytest.raises(UsageError, match="has 440 tokens but .* vocab_size 400"):
        load_checkpoint(tmp_path / "run", tokenizer_dir=other.path)
    write_token_rows(tmp_path / "bad_tokens", [[5, 6, 2] * 30, [7, 400, 2] * 30])  # 400 >= vocab 400
    with pytest.raises(UsageError, match="token id 400 is outside the tokenizer's 400 tokens"):
        pretrain(tmp_path / "bad_tokens", root / "tok", tmp_path / "run2", small_cfg())


def test_cli_pretrain_generate_plot(data, tmp_path):
    root, _ = data
    run = tmp_path / "run"
    args = [
        "pretrain",
        str(root / "tokens"),
        "-t",
        str(root / "tok"),
        "-o",
        str(run),
        "--seq-len",
        "32",
        "--batch-tokens",
        "128",
        "--micro-batch",
        "4",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--d-model",
        "32",
        "--n-kv-head",
        "2",
        "--schedule",
        "wsd",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "finished: loss" in r.output and "parameters" in r.output
    manifest = json.loads((run / "_manifest.json").read_text())
    assert manifest["stage"] == "pretrain" and manifest["config"]["model"]["n_kv_head"] == 2
    assert len(manifest["inputs"]) == 2
    r = CliRunner().invoke(app, ["generate", str(run), "Once upon", "-n", "5", "--seed", "1"])
    assert r.exit_code == 0 and r.output.startswith("Once upon")
    r = CliRunner().invoke(app, ["plot", str(run), "-o", str(tmp_path / "loss.png")])
    assert r.exit_code == 0 and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
