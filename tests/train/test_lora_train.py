"""LoRA in the fine-tuning stages: SFT learns with adapters only, resume, DPO/GRPO reference = adapters off."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from align_helpers import GSM8K, synthetic_prefs, tiny_checkpoint, tokenizer, write_jsonl
from rl_helpers import config as rl_config
from rl_helpers import setup as rl_setup
from safetensors import safe_open

import llmctl.model.checkpoint as checkpoint_mod
from llmctl import config as C
from llmctl.cli import main
from llmctl.errors import UsageError
from llmctl.model.checkpoint import WEIGHTS, load_checkpoint
from llmctl.model.lora import ADAPTER_WEIGHTS, LoraConfig, has_lora
from llmctl.model.reward import load_reward_model
from llmctl.train.dpo import DPOConfig, run_dpo
from llmctl.train.finetune import encode_prefs
from llmctl.train.pretrain import PretrainConfig
from llmctl.train.reward import RewardConfig, make_rm_evaluate, run_reward
from llmctl.train.rl.trainer import run_rl
from llmctl.train.run_dir import run_state
from llmctl.train.sft import SFTConfig, encode_sft, labels_for, run_sft


def _sft_data(tmp_path, n: int = 120):
    lines = GSM8K.read_text().splitlines()[:n]
    rows = [{"prompt": r["question"], "response": r["answer"]} for r in map(json.loads, lines)]
    return rows, write_jsonl(tmp_path / "sft.jsonl", rows)


def _sft_cfg(seed: int, steps: int = 8, **train) -> SFTConfig:
    cfg = SFTConfig(max_len=256, val_fraction=0.2)
    t = cfg.train
    t.steps, t.batch_size, t.micro_batch, t.lr, t.seed = steps, 4, 4, 1e-2, seed
    t.warmup_steps, t.eval_every, t.log_every, t.ckpt_every = 2, steps, 100, steps
    t.lora = LoraConfig(r=8)
    for k, v in train.items():
        setattr(t, k, v)
    return cfg


def _example_nll(model, examples) -> torch.Tensor:
    """Mean response-token NLL of each example alone (an independent computation from the trainer's)."""
    out = []
    with torch.no_grad():
        for e in examples:
            logits = model(torch.tensor([e.ids]))[0]
            out.append(F.cross_entropy(logits, torch.tensor(labels_for(e)), ignore_index=-100).item())
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lora_sft_lowers_held_out_loss_by_more_than_two_standard_errors(tmp_path, seed):
    tok = tokenizer()
    ck = tiny_checkpoint(tmp_path / "ck")
    rows, data = _sft_data(tmp_path)
    cfg = _sft_cfg(seed)
    _, val, _ = encode_sft(tok, rows, 256, 0.2, seed)
    before = _example_nll(load_checkpoint(ck)[0], val)
    summary = run_sft(data, ck, tmp_path / "run", cfg)
    run_ck = tmp_path / "run" / "checkpoints" / "step_0000008"
    after_model = load_checkpoint(tmp_path / "run")[0]
    assert has_lora(after_model)
    after = _example_nll(after_model, val)
    diff = before - after  # paired: the same held-out examples before and after
    se = diff.std() / math.sqrt(len(diff))
    assert diff.mean() > 2 * se, (diff.mean().item(), se.item())
    assert summary["val_loss"] < before.mean().item()
    # the checkpoint holds the adapters only: exactly the parameters that trained
    assert not (run_ck / WEIGHTS).exists() and (run_ck / ADAPTER_WEIGHTS).is_file()
    with safe_open(str(run_ck / ADAPTER_WEIGHTS), "pt") as f:
        saved = {k.removeprefix("base_model.model.model.") for k in f.keys()}
    assert saved == {n for n, _ in after_model.named_parameters() if "lora_" in n}
    opt = torch.load(run_ck / "train_state.pt", weights_only=True)["optimizer"]["state"]
    assert set(opt) == saved  # optimizer moments only for the adapters
    man = json.loads((tmp_path / "run" / "_manifest.json").read_text())
    assert man["lora"]["r"] == 8 and man["lora"]["base"]["path"] == str(ck.resolve())


def test_lora_resume_continues_exactly_and_dpo_starts_from_the_lora_run(tmp_path, monkeypatch):
    ck = tiny_checkpoint(tmp_path / "ck")
    _, data = _sft_data(tmp_path, n=24)

    def cfg(stop=None):
        return _sft_cfg(0, steps=4, ckpt_every=2, eval_every=0, stop_after=stop, batch_size=2, micro_batch=2)

    run_sft(data, ck, tmp_path / "full", cfg())
    assert not run_sft(data, ck, tmp_path / "part", cfg(2))["finished"]
    run_sft(data, ck, tmp_path / "part", cfg())
    losses = [
        [json.loads(ln)["loss"] for ln in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("full", "part")
    ]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    ids = torch.randint(0, 400, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = (load_checkpoint(tmp_path / d)[0](ids) for d in ("full", "part"))
    assert torch.equal(a, b)
    # DPO with LoRA on top of the LoRA SFT run: the start's adapters are merged, new ones train
    prefs = write_jsonl(tmp_path / "prefs.jsonl", synthetic_prefs(16))
    d = DPOConfig(max_len=64, val_fraction=0.0)
    d.train.steps, d.train.batch_size, d.train.micro_batch, d.train.warmup_steps = 1, 4, 4, 0
    d.train.eval_every, d.train.lora = 0, LoraConfig(r=4)
    run_dpo(prefs, tmp_path / "full", tmp_path / "dpo", d)
    rec = json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["loss"] == pytest.approx(math.log(2), abs=1e-6)
    with torch.no_grad():
        assert torch.allclose(load_checkpoint(tmp_path / "dpo")[0](ids), a, atol=1e-3)  # one small step away


def _count_loads(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = checkpoint_mod.load_checkpoint

    def counted(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr("llmctl.train.finetune.load_checkpoint", counted)
    return calls


def test_dpo_with_lora_uses_the_base_with_adapters_off_as_reference(tmp_path, monkeypatch):
    ck = tiny_checkpoint(tmp_path / "ck")
    data = write_jsonl(tmp_path / "prefs.jsonl", synthetic_prefs(32))

    def cfg(r: int) -> DPOConfig:
        c = DPOConfig(beta=0.1, max_len=64, val_fraction=0.0)
        c.train.steps, c.train.batch_size, c.train.micro_batch, c.train.lr, c.train.warmup_steps = 3, 8, 8, 1e-2, 0
        c.train.eval_every, c.train.lora = 0, LoraConfig(r=r)
        return c

    loads = _count_loads(monkeypatch)
    run_dpo(data, ck, tmp_path / "full", cfg(0))
    assert len(loads) == 2  # policy + reference
    loads.clear()
    run_dpo(data, ck, tmp_path / "lora", cfg(4))
    assert len(loads) == 1  # the policy only: no second copy
    full, lora = (
        [json.loads(ln) for ln in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("full", "lora")
    )
    assert lora[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for k in ("logps/chosen", "logps/rejected"):
        assert lora[0][k] == pytest.approx(full[0][k], abs=1e-5)
    assert lora[-1]["loss"] < math.log(2)  # adapters moved the policy away from its reference
    assert lora[-1]["rewards/margins"] > 0


def test_grpo_with_lora_keeps_kl_to_the_adapters_off_base(tmp_path, monkeypatch):
    ck, prompts = rl_setup(tmp_path)
    cfg = rl_config("grpo", steps=2, beta=0.05, train={"lora": LoraConfig(r=4), "lr": 1e-2})
    loads = _count_loads(monkeypatch)
    summary = run_rl(prompts, ck, tmp_path / "rl", cfg)
    assert summary["finished"] and len(loads) == 1
    rec = [json.loads(ln) for ln in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    kl = [r[k] for r in rec for k in r if k == "kl"]
    assert kl and kl[0] == pytest.approx(0.0, abs=1e-6)  # first step: policy == reference
    assert (tmp_path / "rl" / "checkpoints" / "step_0000002" / ADAPTER_WEIGHTS).is_file()


def test_ppo_with_lora_trains_and_saves_its_value_head_beside_the_adapters(tmp_path, monkeypatch):
    ck, prompts = rl_setup(tmp_path)
    cfg = rl_config("ppo", steps=2, train={"lora": LoraConfig(r=4), "lr": 1e-2})
    loads = _count_loads(monkeypatch)
    assert run_rl(prompts, ck, tmp_path / "ppo", cfg)["finished"] and len(loads) == 1  # reference = adapters off
    step = tmp_path / "ppo" / "checkpoints" / "step_0000002"
    with safe_open(str(step / ADAPTER_WEIGHTS), "pt") as f:
        head = f.get_tensor("base_model.model.value_head.weight")
        assert all(k.startswith("base_model.model.model.layers.") for k in f.keys() if "value_head" not in k)
    assert head.abs().sum() > 0  # zero at the start: it trained
    assert json.loads((step / "adapter_config.json").read_text())["modules_to_save"] == ["value_head"]
    lm = load_checkpoint(step)[0]  # as a language model: the value head is left out
    assert has_lora(lm) and not hasattr(lm, "value_head")


def test_reward_model_with_lora_learns_and_scores_as_validated(tmp_path):
    tok = tokenizer()
    ck = tiny_checkpoint(tmp_path / "ck")
    rows = synthetic_prefs(120)
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    cfg = RewardConfig(max_len=64, val_fraction=0.25)
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch, cfg.train.lr = 15, 8, 8, 1e-2
    cfg.train.warmup_steps, cfg.train.eval_every, cfg.train.log_every = 2, 15, 100
    cfg.train.lora = LoraConfig(r=4)
    summary = run_reward(data, ck, tmp_path / "rm", cfg)
    assert summary["val_accuracy"] >= 0.8, summary  # chance is 0.5
    step = tmp_path / "rm" / "checkpoints" / "step_0000015"
    assert not (step / WEIGHTS).exists()
    with safe_open(str(step / ADAPTER_WEIGHTS), "pt") as f:
        assert "base_model.model.score_head.weight" in f.keys()
    scorer = load_reward_model(tmp_path / "rm")  # base + merged adapters + score head
    _, val, _ = encode_prefs(tok, rows, 64, 0.25, cfg.train.seed)
    with torch.no_grad():
        again = make_rm_evaluate(val, 8, tok.pad_id)(scorer.model)
    assert again["val_accuracy"] == pytest.approx(summary["val_accuracy"], abs=1e-9)
    assert again["val_loss"] == pytest.approx(summary["val_loss"], abs=1e-4)
    with pytest.raises(UsageError, match="not a language model"):
        load_checkpoint(tmp_path / "rm")


def test_unknown_lora_target_on_the_command_line_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    ck = tiny_checkpoint(tmp_path / "ck")
    _, data = _sft_data(tmp_path, n=8)
    out = tmp_path / "run"
    args = ["sft", str(data), "--from", str(ck), "-o", str(out), "--steps", "2", "--lora-r", "4"]
    monkeypatch.setattr(sys, "argv", ["llmctl", *args, "--lora-targets", "q_proj,foo_proj"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and "foo_proj match no linear layer" in lines[0], lines
    assert not out.exists()


@pytest.mark.slow  # two torchrun processes
def test_lora_sft_under_ddp_equals_one_process(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck")
    _, data = _sft_data(tmp_path, n=24)
    args = ["sft", str(data), "--from", str(ck), "--steps", "3", "--batch-size", "4", "--micro-batch", "2"]
    args += [
        "--lr",
        "1e-2",
        "--warmup",
        "1",
        "--eval-every",
        "3",
        "--max-len",
        "256",
        "--lora-r",
        "4",
        "--val-fraction",
        "0.25",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for out, pre in (("one", []), ("ddp", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])):
        cmd = [sys.executable, *pre, "-m", "llmctl", *args, "-o", str(tmp_path / out)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    one, ddp = (
        [json.loads(ln) for ln in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("one", "ddp")
    )
    for k in ("loss", "val_loss"):
        a, b = ([r[k] for r in recs if k in r] for recs in (one, ddp))
        assert len(a) == (3 if k == "loss" else 1) and a == pytest.approx(b, rel=1e-5, abs=1e-6), (k, a, b)
    assert (tmp_path / "ddp" / "checkpoints" / "step_0000003" / ADAPTER_WEIGHTS).is_file()


def test_pretrain_and_bad_lora_options_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="pretrain trains the whole model"):
        C.load(PretrainConfig, None, ["train.lora.r=4"])
    with pytest.raises(UsageError, match="--lora-r must be"):
        LoraConfig(r=-1)


def test_full_fine_tuning_runs_keep_the_run_state_they_had_before_lora():
    """A run recorded before train.lora existed resumes: LoRA off leaves the recorded state unchanged."""
    assert "lora" not in run_state("sft", SFTConfig(), [])["config"]["train"]
    cfg = SFTConfig()
    cfg.train.lora = LoraConfig(r=4)
    assert run_state("sft", cfg, [])["config"]["train"]["lora"]["r"] == 4
