"""`llmctl export`: a checkpoint as a Hugging Face `LlamaForCausalLM` directory (an MoE one as
`MixtralForCausalLM` or `Qwen2MoeForCausalLM`, see llmctl.export.hf_moe).

llmctl's module names are Llama's, so the weights are renamed (prefix `model.`), not permuted:
RoPE uses the same half-split layout, RMSNorm the same fp32 normalisation, so transformers'
logits equal llmctl's within ~1e-6 in fp32 (the test checks 1e-4). Position interpolation is
written as `rope_parameters = {"rope_type": "linear", "factor": rope_scale}`.

The recipe's switches (llmctl.model.transformer): zero-initialised projections and untied
embeddings change no computation; QK-norm maps to `Qwen3ForCausalLM` (Llama plus per-head q/k
RMSNorm, same names) and a ReLU^2 MLP to `ArceeForCausalLM` (Llama with a non-gated relu2 MLP of
up/down_proj), each with equal logits. No supported transformers class has both, a soft-capped
Llama-style head, or an MoE with either, so those are refused with one line before anything is written.

Tokenizer: besides the checkpoint's tokenizer files (`tokenizer.model` for sentencepiece users),
the export writes `tokenizer.json` (`llmctl.export.hf_tokenizer`: the same ids as llmctl's tokenizer,
read by `tokenizers` alone, so a plain `transformers` install without protobuf or sentencepiece
loads it) and a `tokenizer_config.json` that names `PreTrainedTokenizerFast`, so transformers
reads that file instead of converting the sentencepiece model. With `split_special_tokens`
(the default) "<|user|>" typed in text stays text, as in llmctl; chat templates then need
`tokenizer_kwargs={"split_special_tokens": False}` (see `llmctl.export.hf_tokenizer`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmctl.errors import UsageError
from llmctl.export.hf_moe import moe_hf_config, moe_hf_state
from llmctl.export.hf_tokenizer import tokenizer_json
from llmctl.model.checkpoint import load_checkpoint, read_model_config, resolve_checkpoint, write_weights
from llmctl.model.hf_import import copy_tokenizer_files
from llmctl.model.lora import has_lora, merge_lora
from llmctl.model.transformer import ModelConfig
from llmctl.store.dataset import atomic_write_json, atomic_write_text
from llmctl.store.lock import exclusive_output
from llmctl.store.manifest import MANIFEST, write_manifest
from llmctl.tokenizer.base import BOS, CHAT_TEMPLATE_JINJA, CHAT_TOKENS, EOS, PAD, TOOL_TOKENS, UNK, has_tool_tokens
from llmctl.tokenizer.spm import Tokenizer


def check_exportable(cfg: ModelConfig) -> None:
    """One-line UsageError for a model of llmctl's own that no transformers class computes exactly."""
    if cfg.hf_arch is not None:
        return
    if cfg.logit_softcap:
        raise UsageError(
            f"export: logit soft-capping (logit_softcap {cfg.logit_softcap:g}) has no Llama-style transformers class "
            "that computes it; train without --logit-softcap to export"
        )
    if cfg.qk_norm and cfg.mlp_act != "swiglu":
        raise UsageError("export: no transformers class has both QK-norm (Qwen3) and a ReLU^2 MLP (Arcee)")
    if cfg.n_experts and (cfg.qk_norm or cfg.mlp_act != "swiglu"):
        raise UsageError("export: a Mixture-of-Experts model exports as Mixtral or Qwen2-MoE, which have no QK-norm")


def hf_config(cfg: ModelConfig, bos_id: int | None, eos_id: int | None, pad_id: int | None) -> dict:
    """config.json: LlamaForCausalLM, or Qwen3ForCausalLM with QK-norm, or ArceeForCausalLM with ReLU^2."""
    rope = {"rope_theta": cfg.rope_base, "rope_type": "default"}
    if cfg.rope_scale != 1.0:
        rope = {"rope_theta": cfg.rope_base, "rope_type": "linear", "factor": cfg.rope_scale}
    out = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": rope,
        "rope_scaling": None if cfg.rope_scale == 1.0 else {"rope_type": "linear", "factor": cfg.rope_scale},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "use_cache": True,
        "dtype": "float32",
    }
    if cfg.qk_norm:
        out.update(
            architectures=["Qwen3ForCausalLM"],
            model_type="qwen3",
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=cfg.n_layer,
            layer_types=["full_attention"] * cfg.n_layer,
        )
        out.pop("mlp_bias")
    elif cfg.mlp_act == "relu2":
        out.update(architectures=["ArceeForCausalLM"], model_type="arcee", hidden_act="relu2")
    return out


def hf_tokenizer_config(max_len: int, split_special_tokens: bool = True, tool_tokens: bool = False) -> dict:
    """transformers' tokenizer_config.json for the export's tokenizer.json; `tool_tokens`: the
    tokenizer has the tool-call control tokens, listed with the chat tokens as special."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "additional_special_tokens": list(CHAT_TOKENS) + (list(TOOL_TOKENS) if tool_tokens else []),
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "split_special_tokens": split_special_tokens,
        "chat_template": CHAT_TEMPLATE_JINJA,
    }


@exclusive_output("out", discard_unfinished=True)
def export_hf(
    checkpoint: str | Path,
    out: str | Path,
    overwrite: bool = False,
    split_special_tokens: bool = True,
    merge: bool = False,
) -> Path:
    """Write OUT/{model.safetensors, config.json, generation_config.json, tokenizer files}; `merge`
    folds a LoRA run's adapters into the base weights (required for a LoRA run)."""
    out = Path(out)
    try:
        check_exportable(read_model_config(resolve_checkpoint(checkpoint)))  # before anything is written
    except UsageError as e:
        if str(e).startswith("export:"):
            raise
        # not a full checkpoint (a LoRA run's adapters): load_checkpoint below says what it is
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out}: exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    model, cfg, tok_dir, manifest = load_checkpoint(checkpoint)
    if merge:
        merge_lora(model, checkpoint)
    elif has_lora(model):
        raise UsageError(f"{checkpoint}: a LoRA run holds adapters only: pass --merge to export base + adapters")
    check_exportable(cfg)
    if cfg.hf_arch is not None:
        return _export_imported(checkpoint, out, model, cfg, tok_dir, manifest)
    ids = {"bos": None, "eos": None, "pad": None}
    tok, stops = None, None
    if tok_dir is not None:
        tok = Tokenizer.load(tok_dir)
        ids = {"bos": tok.bos_id, "eos": tok.eos_id, "pad": tok.pad_id}
        stops = [tok.eos_id] + [
            i for i in tok.stop_ids if i != tok.eos_id
        ]  # `generate` ends a chat turn as llmctl does
    state = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            if not cfg.tie_embeddings:
                state[k] = v.contiguous()
        else:
            state[f"model.{k}"] = v.contiguous()
    hf_cfg = hf_config(cfg, ids["bos"], ids["eos"], ids["pad"])
    if cfg.n_experts:
        hf_cfg, state = moe_hf_config(cfg, hf_cfg), moe_hf_state(cfg, state)
    out.mkdir(parents=True, exist_ok=True)
    write_weights(state, out / "model.safetensors")  # mode 0644 under the usual umask, like the other files
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps(
            {"bos_token_id": ids["bos"], "eos_token_id": stops or ids["eos"], "pad_token_id": ids["pad"]}, indent=2
        )
        + "\n"
    )
    if tok is not None:
        for f in Path(tok_dir).iterdir():
            if f.is_file() and f.name != MANIFEST:
                shutil.copy2(f, out / f.name)
        atomic_write_text(out / "tokenizer.json", json.dumps(tokenizer_json(tok), ensure_ascii=False))
        atomic_write_json(
            out / "tokenizer_config.json",
            hf_tokenizer_config(cfg.max_seq_len, split_special_tokens, has_tool_tokens(tok)),
        )
    write_manifest(
        out,
        {
            "stage": "export",
            "format": f"huggingface-{hf_cfg['model_type']}",
            "config": {"split_special_tokens": split_special_tokens},
            "inputs": [{"path": str(Path(checkpoint).resolve()), "step": manifest.get("step")}],
            "model": cfg.to_dict(),
        },
    )
    return out


def _export_imported(checkpoint, out: Path, model, cfg: ModelConfig, tok_dir, manifest) -> Path:
    """A model imported from Hugging Face goes back to its source architecture class: the source
    config.json (with this model's dtype and tying), the same tensor names, its own tokenizer and
    chat-template files verbatim."""
    state = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            if not cfg.tie_embeddings:
                state[k] = v.contiguous()
        else:
            state[f"model.{k}"] = v.contiguous()
    dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
    hf_cfg = {**(cfg.hf_config or {}), "dtype": dtype, "tie_word_embeddings": cfg.tie_embeddings}
    hf_cfg.pop("torch_dtype", None)
    out.mkdir(parents=True, exist_ok=True)
    write_weights(state, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    if tok_dir is not None:
        copy_tokenizer_files(tok_dir, out)
    write_manifest(
        out,
        {
            "stage": "export",
            "format": f"huggingface-{hf_cfg.get('model_type', 'llama')}",
            "inputs": [{"path": str(Path(checkpoint).resolve()), "step": manifest.get("step")}],
            "model": cfg.to_dict(),
        },
    )
    return out
