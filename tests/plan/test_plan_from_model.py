"""`llmctl plan --from MODEL` (an llmctl checkpoint or run dir, a local Hugging Face dir) and `--lora-r`."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from llmctl.cli import app
from llmctl.cli.plan import _model_config
from llmctl.model.checkpoint import save_checkpoint
from llmctl.model.lora import LoraConfig, apply_lora, trainable_summary
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.plan import Layout, plan

runner = CliRunner()
CFG = ModelConfig(vocab_size=384, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=160, max_seq_len=128)


def _plan_args(source, *extra):
    return ["plan", "--from", str(source), "--seq-len", "64", "--batch-tokens", "256", *extra]


@pytest.fixture
def run_dir(tmp_path):
    """A run directory whose latest step checkpoint holds CFG."""
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000010", Transformer(CFG), CFG)
    return tmp_path / "run"


@pytest.fixture
def hf_dir(tmp_path):
    """A tiny Llama written by transformers itself (random weights, nothing downloaded)."""
    hf = LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf)
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", sum(p.numel() for p in model.parameters())


def test_from_an_llmctl_run_dir_plans_its_checkpoint(run_dir):
    assert _model_config(str(run_dir), None) == CFG
    p = plan(CFG, Layout(), 64, 4)
    r = runner.invoke(app, _plan_args(run_dir))
    assert r.exit_code == 0, r.output
    assert f"{run_dir}: {p.n_params / 1e6:,.1f}M params" in r.output
    assert p.n_params == Transformer(CFG).num_params()


def test_from_a_hugging_face_dir_counts_its_parameters(hf_dir):
    path, hf_params = hf_dir
    cfg = _model_config(str(path), None)
    assert (cfg.vocab_size, cfg.n_layer, cfg.n_kv_head, cfg.d_ff) == (320, 3, 2, 176)
    assert plan(cfg, Layout(), 64, 4).n_params == hf_params
    r = runner.invoke(app, _plan_args(path, "--n-layer", "6"))  # a shape flag still overrides
    assert r.exit_code == 0, r.output
    six = plan(dataclasses.replace(cfg, n_layer=6), Layout(), 64, 4)
    assert f"{six.n_params / 1e6:,.1f}M params" in r.output and six.n_params > hf_params


def test_from_a_path_that_is_no_model_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for bad in (tmp_path, tmp_path / "missing"):
        r = runner.invoke(app, _plan_args(bad))
        assert r.exit_code != 0
        assert (
            str(r.exception)
            == f"--from {bad}: not an llmctl checkpoint or run directory, nor a Hugging Face model directory"
        )


def test_lora_trains_the_adapters_only(run_dir):
    """The trainable count, gradients and AdamW state are those of the real model with apply_lora."""
    lora = LoraConfig(r=4, targets="q_proj,v_proj")
    real = Transformer(CFG)
    apply_lora(real, lora)
    trained, total = trainable_summary(real)
    p = plan(CFG, Layout(), 64, 4, dtype="fp32", lora=lora)
    assert (p.n_trainable, p.n_params) == (trained, total)
    assert p.memory.grads == 4 * trained and p.memory.optimizer == 8 * trained
    assert p.memory.params == 4 * total
    full = plan(CFG, Layout(), 64, 4, dtype="fp32")
    assert p.memory.peak < full.memory.peak and p.flops_per_token < full.flops_per_token
    r = runner.invoke(app, _plan_args(run_dir, "--lora-r", "4", "--lora-targets", "q_proj,v_proj"))
    assert r.exit_code == 0, r.output
    assert f"({trained / 1e6:,.2f}M trained: LoRA r=4)" in r.output


def test_lora_target_that_matches_no_layer_is_one_line(run_dir):
    r = runner.invoke(app, _plan_args(run_dir, "--lora-r", "4", "--lora-targets", "qkv"))
    assert r.exit_code != 0 and "LoRA targets qkv match no linear layer" in str(r.exception)
