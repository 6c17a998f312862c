"""Hugging Face import: llmctl's Transformer loaded from a Llama/Mistral/Qwen2/Qwen3 directory gives
transformers' logits and greedy tokens, and exports back to the same architecture.

Models are built here from transformers' config classes with tiny random weights (nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
from copy import deepcopy as copy_module

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config  # noqa: E402

from llmctl.errors import UsageError  # noqa: E402
from llmctl.export.hf import export_hf  # noqa: E402
from llmctl.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from llmctl.model.generate import generate  # noqa: E402
from llmctl.model.hf_import import hf_model_config, load_hf  # noqa: E402

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=None,
    eos_token_id=None,  # greedy generation runs its full length in both libraries
    pad_token_id=None,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
YARN_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}
FAMILIES = {
    "llama": lambda: LlamaConfig(
        **COMMON, tie_word_embeddings=True, attention_bias=True, mlp_bias=True, rope_parameters=LLAMA3_ROPE
    ),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=None, tie_word_embeddings=False),
    "qwen2": lambda: Qwen2Config(**COMMON, tie_word_embeddings=False, rope_parameters=YARN_ROPE),
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=32, tie_word_embeddings=True),
    "qwen2-linear": lambda: Qwen2Config(
        **COMMON, tie_word_embeddings=True, rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
    ),
}


def build(cfg, out, **save_kw):
    """A transformers model with random weights large enough that logits are far from uniform."""
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg).float()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.15)
    m.save_pretrained(out, **save_kw)
    return m.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: (root / name, build(make(), root / name)) for name, make in FAMILIES.items()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(models, family):
    path, ref = models[family]
    model, cfg, _, manifest = load_hf(path)
    assert cfg.hf_arch == ref.config.architectures[0] and manifest["stage"] == "hf-model"
    ids = torch.randint(0, 128, (2, 200), generator=torch.Generator().manual_seed(1))  # > 2x the rope's original 64
    with torch.no_grad():
        want = ref(ids).logits
        got = model(ids)
    assert want.std() > 0.5  # not a near-uniform model
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_greedy_generation_matches_transformers(models, family):
    path, ref = models[family]
    model, *_ = load_hf(path)
    prompt = [5, 17, 99, 3, 42, 8, 77]
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=32)[0, len(prompt) :].tolist()
    got = generate(model, prompt, max_new_tokens=32, temperature=0)
    assert got == want and len(got) == 32


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_export_round_trip(models, family, tmp_path):
    """Import -> llmctl checkpoint -> export: transformers loads the source class and gives the same logits."""
    path, ref = models[family]
    model, cfg, tok, _ = load_hf(path)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, cfg, tok)
    loaded, cfg2, *_ = load_checkpoint(ckpt)
    assert cfg2.hf_arch == cfg.hf_arch and cfg2.qk_norm == cfg.qk_norm
    out = export_hf(ckpt, tmp_path / "hf")
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(back).__name__ == type(ref).__name__
    ids = torch.randint(0, 128, (1, 150), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ref(ids).logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(loaded(ids), ref(ids).logits, atol=1e-4, rtol=0)


def test_sharded_bf16(models, tmp_path):
    """Shards + index, bf16 on disk: loads into fp32 (= the bf16 values exactly) or keeps bf16 with dtype auto."""
    _, ref = models["qwen2"]
    copy_module(ref).to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="20KB")  # the shared ref stays fp32
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 3
    model, *_ = load_hf(tmp_path)
    assert model.embed_tokens.weight.dtype == torch.float32
    torch.testing.assert_close(model.embed_tokens.weight, ref.model.embed_tokens.weight.bfloat16().float())
    auto, *_ = load_hf(tmp_path, dtype="auto")
    assert auto.layers[0].self_attn.q_proj.bias.dtype == torch.bfloat16
    back = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), back(ids).logits, atol=1e-4, rtol=0)


def test_tied_weights_stay_tied(models):
    model, cfg, *_ = load_hf(models["qwen3"][0])
    assert cfg.tie_embeddings and model.lm_head.weight is model.embed_tokens.weight


# ----------------------------------------------------------------------------- bad inputs


def copy(models, family, dst):
    shutil.copytree(models[family][0], dst)
    return dst


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_dir_without_weights(tmp_path, models):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(models["llama"][0] / "config.json", d)
    with pytest.raises(UsageError) as e:
        load_checkpoint(d)
    assert "no safetensors weights" in one_line(e)


def test_unsupported_architecture(tmp_path, models):
    d = copy(models, "llama", tmp_path / "m")
    c = json.loads((d / "config.json").read_text())
    c["architectures"], c["model_type"] = ["GPT2LMHeadModel"], "gpt2"
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(UsageError) as e:
        load_checkpoint(d)
    msg = one_line(e)
    assert "unsupported architecture GPT2LMHeadModel" in msg and "Qwen3ForCausalLM" in msg


def test_unsupported_rope_type(tmp_path, models):
    d = copy(models, "mistral", tmp_path / "m")
    c = json.loads((d / "config.json").read_text())
    c["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(UsageError) as e:
        hf_model_config(d)
    assert "rope_type 'dynamic' is not supported" in one_line(e)


@pytest.mark.parametrize("edit", ["rename", "shape"])
def test_weights_not_matching_config(tmp_path, models, edit):
    d = copy(models, "mistral", tmp_path / "m")
    sd = load_file(str(d / "model.safetensors"))
    if edit == "rename":
        sd["model.layers.0.mlp.gate.weight"] = sd.pop("model.layers.0.mlp.gate_proj.weight")
    else:
        sd["model.norm.weight"] = torch.ones(65)
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(UsageError) as e:
        load_hf(d)
    msg = one_line(e)
    assert "weights do not match config.json" in msg
    assert ("gate_proj" in msg and "mlp.gate.weight" in msg) if edit == "rename" else "norm.weight (65,)" in msg


def test_tokenizer_larger_than_embeddings(tmp_path, models):
    tokenizers = pytest.importorskip("tokenizers")
    d = copy(models, "qwen3", tmp_path / "m")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"w{i}": i for i in range(200)}, unk_token="w0"))
    tok.save(str(d / "tokenizer.json"))
    with pytest.raises(UsageError) as e:
        load_checkpoint(d)
    assert "ids up to 199 but the model's embeddings have 128 rows" in one_line(e)


def test_older_config_format_reads_the_same(tmp_path, models):
    """Hub files written before transformers 5: top-level rope_theta, rope_scaling with `type`, torch_dtype."""
    d = copy(models, "qwen2", tmp_path / "m")
    c = json.loads((d / "config.json").read_text())
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp.pop("rope_theta")
    c["rope_scaling"] = {"type": rp.pop("rope_type"), **rp}
    c["torch_dtype"] = c.pop("dtype", "float32")
    (d / "config.json").write_text(json.dumps(c))
    old, new = hf_model_config(d), hf_model_config(models["qwen2"][0])
    assert old.rope_scaling == new.rope_scaling and old.rope_base == new.rope_base
    model, *_ = load_hf(d)
    ids = torch.randint(0, 128, (1, 150), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), models["qwen2"][1](ids).logits, atol=1e-4, rtol=0)


def test_sliding_window_attention_matches_transformers_past_the_window(tmp_path):
    """A Mistral whose sliding window (16) is shorter than the sequence: logits over 60 positions
    (one sequence, and two documents packed with doc_ids), then greedy generation through the KV
    cache past the window, equal transformers'; batched (left-padded) generation past it is refused."""
    ref = build(MistralConfig(**{**COMMON, "sliding_window": 16}), tmp_path / "m")
    model, cfg, *_ = load_hf(tmp_path / "m")
    assert cfg.sliding_window == 16
    ids = torch.randint(0, 128, (2, 60), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids).logits, atol=1e-4, rtol=0)
        # two documents in one row: each computes what it computes alone
        docs = torch.tensor([[0] * 25 + [1] * 35])
        packed = model(torch.cat([ids[0, :25], ids[1, :35]])[None], doc_ids=docs)[0]
        torch.testing.assert_close(packed[:25], ref(ids[:1, :25]).logits[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(packed[25:], ref(ids[1:, :35]).logits[0], atol=1e-4, rtol=0)
        prompt = ids[0, :10].tolist()
        want = ref.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=32)[0, len(prompt) :].tolist()
    assert generate(model, prompt, max_new_tokens=32, temperature=0) == want
    with pytest.raises(UsageError, match="batched generation past the window"), torch.no_grad():
        model(ids[:, :17], attn_mask=torch.ones(2, 1, 17, 17, dtype=torch.bool).tril())


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_damaged_weight_file_is_one_line(tmp_path, models, damage):
    src, _ = models["mistral"]
    d = tmp_path / "m"
    shutil.copytree(src, d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:-100] if damage == "truncated" else b"\xff" * 8 + data[8:])
    with pytest.raises(UsageError, match="not a readable safetensors file") as e:
        load_hf(d)
    assert "\n" not in str(e.value)


def test_import_reads_every_value_and_shares_tied_weights(models):
    """The model is built without initialisers: every parameter holds the file's values."""
    path, ref = models["llama"]
    model, *_ = load_hf(path)
    want = {k.removeprefix("model."): v for k, v in ref.state_dict().items()}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, want[k], atol=0, rtol=0)
    assert model.lm_head.weight is model.embed_tokens.weight and model.lm_head.weight.requires_grad
