"""MoE checkpoints as Hugging Face directories: MixtralForCausalLM or Qwen2MoeForCausalLM.

Mixtral when it fits (every layer MoE, no shared experts, renormalised top-k), else Qwen2-MoE
(shared experts with their sigmoid gate, dense layers between MoE ones via decoder_sparse_step,
`norm_topk_prob` either way; qkv_bias off). Both route as llmctl does: softmax over the router
logits, top-k, optional renormalisation. The weights are written in the Hub's per-expert layout
(Mixtral: `block_sparse_moe.experts.E.w1/w2/w3`; Qwen2-MoE: `mlp.experts.E.gate_proj/up_proj/
down_proj`), the layout of the published checkpoints that vLLM and llama.cpp read and that
transformers 5 fuses into its stacked experts on load.
"""

from __future__ import annotations

import torch

from llmctl.model.moe import is_moe_layer
from llmctl.model.transformer import ModelConfig


def architecture(cfg: ModelConfig) -> str:
    mixtral = cfg.moe_every == 1 and cfg.n_shared_experts == 0 and cfg.moe_norm_topk
    return "mixtral" if mixtral else "qwen2_moe"


def moe_hf_config(cfg: ModelConfig, base: dict) -> dict:
    """The Llama config.json `base` turned into the MoE class's."""
    out = {k: v for k, v in base.items() if k not in ("mlp_bias", "attention_bias", "rope_scaling")}
    common = {
        "num_experts_per_tok": cfg.moe_top_k,
        "output_router_logits": False,
        "router_aux_loss_coef": cfg.moe_lb_coef,
    }
    if architecture(cfg) == "mixtral":
        return {
            **out,
            **common,
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "num_local_experts": cfg.n_experts,
            "intermediate_size": cfg.moe_d_ff,
            "router_jitter_noise": 0.0,
            "sliding_window": None,
        }
    out.pop("head_dim", None)  # Qwen2-MoE derives it from hidden_size / num_attention_heads, as llmctl does
    return {
        **out,
        **common,
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "num_experts": cfg.n_experts,
        "moe_intermediate_size": cfg.moe_d_ff,
        "intermediate_size": cfg.d_ff,
        "shared_expert_intermediate_size": cfg.n_shared_experts * cfg.moe_d_ff,
        "decoder_sparse_step": cfg.moe_every,
        "mlp_only_layers": [],
        "norm_topk_prob": cfg.moe_norm_topk,
        "qkv_bias": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": cfg.n_layer,
    }


def moe_hf_state(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """llmctl's stacked expert weights (already prefixed `model.`) in the Hub's per-expert names."""
    mixtral = architecture(cfg) == "mixtral"
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if ".mlp.experts." not in k:
            if mixtral and ".mlp.gate." in k:
                k = k.replace(".mlp.", ".block_sparse_moe.")
            out[k] = v
            continue
        head, proj = k.rsplit(".experts.", 1)
        names = (
            {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
            if mixtral
            else {p: p for p in ("gate_proj", "up_proj", "down_proj")}
        )
        if mixtral:
            head = head.replace(".mlp", ".block_sparse_moe")
        for e in range(v.shape[0]):
            out[f"{head}.experts.{e}.{names[proj]}.weight"] = v[e].contiguous()
    if not mixtral and cfg.n_shared_experts == 0:  # Qwen2-MoE always has a shared expert: a zero-width one
        d = cfg.d_model
        for i in range(cfg.n_layer):
            if is_moe_layer(cfg, i):
                p = f"model.layers.{i}.mlp.shared_expert"
                out.update(
                    {
                        f"{p}.gate_proj.weight": torch.zeros(0, d),
                        f"{p}.up_proj.weight": torch.zeros(0, d),
                        f"{p}.down_proj.weight": torch.zeros(d, 0),
                        f"{p}_gate.weight": torch.zeros(1, d),
                    }
                )
    return out
