"""The model a server runs: an llmctl checkpoint, or a Hugging Face Llama directory as an llmctl `Transformer`.

A `LlamaForCausalLM` directory (an `llmctl export`, or any Llama without biases, with default or
linear RoPE) maps onto llmctl's Transformer by the inverse of `llmctl.export.hf`: the module names
are Llama's, so the weights are renamed (prefix `model.` dropped), not permuted. Other architectures
are a one-line error. The tokenizer and chat template are the directory's (`HFLM`'s codec).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llmctl.errors import UsageError
from llmctl.eval.base import is_hf_dir
from llmctl.eval.lm import HFLM, LlmctlLM, TextCodec
from llmctl.model.transformer import ModelConfig, Transformer


def llama_config(hf: dict[str, Any], path: Path) -> ModelConfig:
    """llmctl's config for a Llama config.json; UsageError for what llmctl's Transformer does not compute."""
    if hf.get("architectures") != ["LlamaForCausalLM"]:
        raise UsageError(
            f"{path}: serve loads llmctl checkpoints and LlamaForCausalLM directories, not {hf.get('architectures')}"
        )
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if (
        hf.get("attention_bias")
        or hf.get("mlp_bias")
        or hf.get("hidden_act", "silu") != "silu"
        or kind not in ("default", "linear")
    ):
        raise UsageError(f"{path}: a Llama variant llmctl does not compute (biases, activation or rope_type {kind!r})")
    d, nh = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim", d // nh) != d // nh:
        raise UsageError(f"{path}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_head=nh,
        n_kv_head=hf.get("num_key_value_heads", nh),
        d_model=d,
        d_ff=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"],
        rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        rope_scale=float(rope.get("factor", 1.0)) if kind == "linear" else 1.0,
        norm_eps=hf["rms_norm_eps"],
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def load_model(path: str, tokenizer_dir: str | None = None, device: str = "cpu") -> tuple[Transformer, TextCodec, str]:
    """(model in eval mode, tokenizer codec, resolved path) of an llmctl checkpoint, run dir or Llama dir."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such model directory")
    if not is_hf_dir(p):
        lm = LlmctlLM(p, device, tokenizer_dir)
        return lm.model, lm.codec, str(lm.path)
    cfg = llama_config(json.loads((p / "config.json").read_text()), p)
    hf = HFLM(p, "cpu", tokenizer_dir)  # its tokenizer and chat template; the weights come from its model
    state = {k.removeprefix("model."): v for k, v in hf.model.state_dict().items()}
    hf.model = None
    model = Transformer(cfg)
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise UsageError(
            f"{p}: weights do not match a Llama of this config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device=device, dtype=torch.float32).eval(), hf.codec, str(p)


__all__ = ["llama_config", "load_model"]
