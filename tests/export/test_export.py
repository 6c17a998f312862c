"""Hugging Face export: transformers' LlamaForCausalLM loads the directory and gives llmctl's logits."""

import json

import pytest
import torch
from pretrain_helpers import make_tokenizer, stories
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmctl.errors import UsageError
from llmctl.export.hf import export_hf
from llmctl.model.checkpoint import save_checkpoint
from llmctl.model.transformer import ModelConfig, Transformer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


@pytest.mark.parametrize(
    "shape",
    [dict(n_kv_head=4, tie_embeddings=True), dict(n_kv_head=2, tie_embeddings=False, rope_scale=2.0, rope_base=500.0)],
)
def test_export_logits_match_transformers(tmp_path, tok, shape):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=64, max_seq_len=128, **shape)
    m = Transformer(cfg)
    for p in m.parameters():  # move off the init's ones/normal values so every tensor matters
        p.data.add_(0.05 * torch.randn_like(p))
    save_checkpoint(tmp_path / "ck", m, cfg, tokenizer_dir=tok.path)
    export_hf(tmp_path / "ck", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(stories(1)[0])[:100]])
    with torch.no_grad():
        ours = m.eval()(ids)
        theirs = hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_key_value_heads"] == shape["n_kv_head"]
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Once upon a time, there was a little dog."
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)


def test_export_refuses_a_non_empty_dir(tmp_path, tok):
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32)
    save_checkpoint(tmp_path / "ck", Transformer(cfg), cfg, tokenizer_dir=tok.path)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "x").write_text("x")
    with pytest.raises(UsageError, match="--overwrite"):
        export_hf(tmp_path / "ck", tmp_path / "hf")
    export_hf(tmp_path / "ck", tmp_path / "hf", overwrite=True)
    assert not (tmp_path / "hf" / "x").exists()
