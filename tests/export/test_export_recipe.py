"""Export of the recipe's switches: QK-norm as Qwen3ForCausalLM and ReLU^2 as ArceeForCausalLM with
transformers' own logits equal to llmctl's; soft-capping (and combinations no class has) refused
with one line and nothing written."""

import json

import pytest
import torch
from pretrain_helpers import make_tokenizer, stories
from transformers import AutoModelForCausalLM

from llmctl.errors import UsageError
from llmctl.export.hf import export_hf
from llmctl.model.checkpoint import save_checkpoint
from llmctl.model.transformer import ModelConfig, Transformer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


@pytest.mark.parametrize(
    ("switches", "arch"),
    [
        (dict(qk_norm=True, zero_init_proj=True, tie_embeddings=False), "Qwen3ForCausalLM"),
        (dict(qk_norm=True, n_kv_head=2), "Qwen3ForCausalLM"),
        (dict(mlp_act="relu2", tie_embeddings=False), "ArceeForCausalLM"),
        (dict(zero_init_proj=True, tie_embeddings=False), "LlamaForCausalLM"),
    ],
)
def test_recipe_export_logits_match_transformers(tmp_path, tok, switches, arch):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=64, max_seq_len=128, **switches)
    m = Transformer(cfg)
    for p in m.parameters():  # off the init's ones and zeros so every tensor (q/k norms too) matters
        p.data.add_(0.05 * torch.randn_like(p))
    save_checkpoint(tmp_path / "ck", m, cfg, tokenizer_dir=tok.path)
    export_hf(tmp_path / "ck", tmp_path / "hf")
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert conf["architectures"] == [arch]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == arch
    ids = torch.tensor([tok.encode(stories(1)[0])[:100]])
    with torch.no_grad():
        ours = m.eval()(ids)
        theirs = hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    ("switches", "message"),
    [
        (dict(logit_softcap=15.0), "logit soft-capping"),
        (dict(qk_norm=True, mlp_act="relu2"), "both QK-norm"),
        (dict(qk_norm=True, n_experts=4, moe_d_ff=32), "Mixture-of-Experts"),
    ],
)
def test_unmatched_switches_are_refused_before_anything_is_written(tmp_path, tok, switches, message):
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, **switches)
    save_checkpoint(tmp_path / "ck", Transformer(cfg), cfg, tokenizer_dir=tok.path)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep").write_text("x")
    for out, overwrite in ((tmp_path / "hf", False), (tmp_path / "old", True)):
        with pytest.raises(UsageError, match=message) as e:
            export_hf(tmp_path / "ck", out, overwrite=overwrite)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "hf").exists() and (tmp_path / "old" / "keep").read_text() == "x"
