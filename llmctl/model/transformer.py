"""The Transformer: a Llama-style decoder (RMSNorm, RoPE, SwiGLU, SDPA attention, optional GQA).

The modern small-model recipe's switches (modded-nanogpt, nanochat; all off by default, measured in
docs/pretrain.md): `qk_norm` (per-head RMSNorm of q and k before RoPE, as Qwen3), `mlp_act="relu2"`
(a non-gated relu(x)^2 MLP of up/down projections, d_ff 4 x d_model), `zero_init_proj` (attention
and MLP output projections start at zero, so each block starts as the identity) and `logit_softcap`
(logits = cap * tanh(logits / cap)). Untied embeddings are `tie_embeddings=False`.

One plain module with no parallelism in it (DDP/FSDP, compile and activation checkpointing are
applied from outside by `llmctl.train`), laid out with Hugging Face Llama's parameter names so
that `llmctl.export.hf` is a key rename and the logits match `LlamaForCausalLM` to ~1e-6 in fp32.

Packed training windows hold several documents. `forward(..., doc_ids=...)` makes attention
block-diagonal (a token attends only to earlier tokens of its own document) and restarts RoPE
positions at each document, so a packed window computes what the documents alone would. (`doc_mask=False` in the pretrain config turns it off).

FLOPs per token follow the PaLM/nanoGPT estimate: 6 x (non-embedding params + lm head) for the
matmuls forward+backward, plus 12 x n_layer x d_model x T for attention scores and values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llmctl.errors import UsageError
from llmctl.model.moe import MoE, inactive_params, is_moe_layer
from llmctl.model.moe import check_config as check_moe_config

MLP_ACTS = ("swiglu", "relu2")


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int | None = None  # None = n_head (no GQA)
    d_model: int = 64
    d_ff: int | None = None  # None = SwiGLU's 8/3 * d_model rounded up to a multiple of 16
    max_seq_len: int = 256
    rope_base: float = 10000.0
    rope_scale: float = 1.0  # position interpolation: positions are divided by this (context extension)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    # Mixture-of-Experts (llmctl.model.moe); n_experts 0 = a dense model
    n_experts: int = 0  # routed experts per MoE layer
    moe_top_k: int = 2  # experts per token
    n_shared_experts: int = 0  # always-on experts (one gated SwiGLU of n x moe_d_ff, as Qwen2-MoE)
    moe_d_ff: int | None = None  # width of one expert; None = d_ff
    moe_every: int = 1  # layer i is MoE when (i + 1) % moe_every == 0; the others are dense
    moe_norm_topk: bool = True  # renormalise the k routing weights to sum to 1 (Mixtral)
    moe_lb_coef: float = 0.01  # load-balancing loss coefficient (Switch/Mixtral)
    moe_z_coef: float = 0.001  # router z-loss coefficient (ST-MoE)
    moe_capacity_factor: float = 0.0  # 0 = dropless; else tokens over capacity are dropped (and counted)
    moe_jitter: float = 0.0  # multiplicative router-input noise in training (Switch)
    moe_impl: str = "auto"  # auto | loop | grouped (torch grouped_mm)
    # Architecture variants of imported Hugging Face models (llmctl.model.hf_import); the defaults are llmctl's own.
    head_dim: int | None = None  # None = d_model // n_head; q/k/v/o project to n_head * head_dim
    qkv_bias: bool = False  # biases on q/k/v_proj (Qwen2; Llama/Qwen3 attention_bias)
    o_bias: bool = False  # a bias on o_proj (Llama/Qwen3 attention_bias)
    mlp_bias: bool = False  # biases on gate/up/down_proj (Llama mlp_bias)
    qk_norm: bool = False  # per-head RMSNorm of queries and keys before RoPE (Qwen3)
    rope_scaling: dict[str, Any] | None = None  # HF rope parameters: {"rope_type": "linear"|"llama3"|"yarn", ...}
    sliding_window: int | None = None  # recorded from the source; sequences longer than it are refused
    hf_arch: str | None = None  # the source architecture ("Qwen2ForCausalLM"); None = llmctl's own model
    hf_config: dict[str, Any] | None = None  # the source config.json, written back by export
    # The modern small-model recipe (module docstring); qk_norm above is its QK-norm.
    mlp_act: str = "swiglu"  # swiglu | relu2 (non-gated relu(x)^2; d_ff defaults to 4 x d_model)
    zero_init_proj: bool = False  # o_proj and down_proj initialised to zero
    logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap); 0 = off

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.mlp_act not in MLP_ACTS:
            raise UsageError(f"unknown mlp_act {self.mlp_act!r}; choose one of {', '.join(MLP_ACTS)}")
        if self.mlp_act == "relu2" and self.n_experts:
            raise UsageError("mlp_act relu2 is for dense models; Mixture-of-Experts experts are SwiGLU")
        if self.logit_softcap < 0:
            raise UsageError(f"logit_softcap must be 0 (off) or positive (got {self.logit_softcap})")
        if self.d_ff is None:
            # equal MLP parameters either way: 3 matrices of 8/3 d_model or 2 of 4 d_model
            self.d_ff = 4 * self.d_model if self.mlp_act == "relu2" else 16 * math.ceil(8 * self.d_model / 3 / 16)
        if self.moe_d_ff is None:
            self.moe_d_ff = self.d_ff
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise UsageError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
            self.head_dim = self.d_model // self.n_head
        if self.n_head % self.n_kv_head:
            raise UsageError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.head_dim % 2:
            raise UsageError(f"head dim {self.head_dim} must be even for RoPE")
        if self.rope_scaling is not None:
            rope_inv_freq(self)  # validates the rope type and its options
        check_moe_config(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Shapes only; the vocabulary comes from the tokenizer. Parameter counts with tied embeddings:
# tiny ~0.36M at a 4k vocab, 10m ~10M at 8k, 124m ~124M at 50k (GPT-2 small's shape), 350m ~360M at 50k.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=2, n_head=4, d_model=64, max_seq_len=256),
    "10m": dict(n_layer=6, n_head=5, d_model=320, d_ff=864, max_seq_len=512),
    "124m": dict(n_layer=12, n_head=12, d_model=768, d_ff=2048, max_seq_len=1024),
    "350m": dict(n_layer=24, n_head=16, d_model=1024, d_ff=2816, max_seq_len=1024),
    # Mixture-of-Experts (docs/moe.md): 8 experts top-2 of half the dense width = the dense preset's
    # active parameters (+ the router); moe-10m ~25M params, ~10M active at an 8k vocab. olmoe: OLMoE-1B-7B's shape
    # (64 experts top-8, ~7B params, ~1.3B active at a 50k vocab), for GPUs.
    "moe-tiny": dict(n_layer=2, n_head=4, d_model=64, max_seq_len=256, n_experts=8, moe_top_k=2, moe_d_ff=88),
    "moe-10m": dict(
        n_layer=6, n_head=5, d_model=320, d_ff=864, max_seq_len=512, n_experts=8, moe_top_k=2, moe_d_ff=432
    ),
    "olmoe": dict(
        n_layer=16,
        n_head=16,
        d_model=2048,
        d_ff=1024,
        max_seq_len=4096,
        n_experts=64,
        moe_top_k=8,
        moe_d_ff=1024,
        tie_embeddings=False,
        moe_lb_coef=0.01,
        moe_z_coef=0.001,
    ),
}


def preset_config(name: str, vocab_size: int, **overrides: Any) -> ModelConfig:
    """A preset's shape with the tokenizer's vocabulary and any explicit overrides (None = keep)."""
    if name not in PRESETS:
        raise UsageError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    spec = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return ModelConfig(vocab_size=vocab_size, **spec)


# ----------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies (head_dim / 2,) and the attention factor that multiplies cos/sin,
    for `cfg.rope_scaling` as Hugging Face transformers computes them (modeling_rope_utils:
    linear, llama3, yarn). None = plain RoPE (llmctl's own `rope_scale` divides positions instead)."""
    dim, base = cfg.head_dim, cfg.rope_base
    # explicit device: a model built under `torch.device("meta")` (streamed import) still needs real tables
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise UsageError(f"unsupported rope_type {kind!r}; supported: {', '.join(ROPE_TYPES)}")
    if rs.get("partial_rotary_factor", 1.0) != 1.0:
        raise UsageError("partial_rotary_factor != 1 is not supported")
    factor = float(rs.get("factor") or 1.0)
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / factor, 1.0
    orig = rs.get("original_max_position_embeddings")
    if kind == "llama3":
        low_ff, high_ff = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        low_wl, high_wl = orig / low_ff, orig / high_ff
        wavelen = 2 * math.pi / inv
        out = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (orig / wavelen - low_ff) / (high_ff - low_ff)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        return torch.where(medium, smoothed, out), 1.0
    # yarn
    orig = orig or cfg.max_seq_len
    if rs.get("factor") is None:
        factor = cfg.max_seq_len / orig
    attn = rs.get("attention_factor")
    ms, msad = rs.get("mscale"), rs.get("mscale_all_dim")
    if attn is None:
        attn = _yarn_mscale(factor, ms) / _yarn_mscale(factor, msad) if ms and msad else _yarn_mscale(factor)
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1
    truncate = rs.get("truncate", True)

    def corr_dim(rot: float) -> float:
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    extrap = 1 - ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    return (1.0 / (factor * pos_freqs)) * (1 - extrap) + (1.0 / pos_freqs) * extrap, float(attn)


def rope_cos_sin(
    positions: torch.Tensor,
    head_dim: int,
    base: float,
    scale: float,
    inv_freq: torch.Tensor | None = None,
    attn_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (B, T, head_dim) for integer positions (B, T); Llama's half-split layout.
    `inv_freq` (from `rope_inv_freq`) replaces the plain frequencies of `base`."""
    if inv_freq is None:
        inv_freq = 1.0 / (
            base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
        )
    angles = (positions.float() / scale)[..., None] * inv_freq.to(positions.device)
    emb = torch.cat([angles, angles], dim=-1)
    if attn_factor != 1.0:
        return emb.cos() * attn_factor, emb.sin() * attn_factor
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (B, T, D)."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class KVCache:
    """Keys and values of the tokens seen so far, per layer: (B, n_kv_head, max_len, head_dim)."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device: Any = "cpu", dtype: Any = torch.float32):
        shape = (batch, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.pos = 0  # tokens already stored (same for every layer once a forward finishes)
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        if self.pos + t > self.max_len:
            raise UsageError(f"KV cache full: {self.pos + t} tokens > {self.max_len}")
        self.k[layer][:, :, self.pos : self.pos + t] = k
        self.v[layer][:, :, self.pos : self.pos + t] = v
        end = self.pos + t
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_head * hd, cfg.d_model, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.norm_eps)
            self.k_norm = RMSNorm(hd, cfg.norm_eps)

    def forward(self, x, cos, sin, mask, kv_cache: KVCache | None):
        b, t, _ = x.shape
        hd, nh, nkv = self.cfg.head_dim, self.cfg.n_head, self.cfg.n_kv_head
        # -1 heads: under tensor parallelism each rank holds n_head/tp query and n_kv_head/tp kv heads
        q = self.q_proj(x).view(b, t, -1, hd)
        k = self.k_proj(x).view(b, t, -1, hd)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)
        if nkv != nh:  # grouped-query attention: each kv head serves n_head/n_kv_head query heads
            k = k.repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.mlp_act == "swiglu":
            self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "gate_proj"):  # relu2
            return self.down_proj(F.relu(self.up_proj(x)).square())
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MoE(cfg) if is_moe_layer(cfg, layer) else MLP(cfg)

    def forward(self, x, cos, sin, mask, kv_cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


# ----------------------------------------------------------------------------- the model


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its document: 0, 1, 2, ... restarting where doc_ids changes."""
    b, t = doc_ids.shape
    idx = torch.arange(t, device=doc_ids.device).expand(b, t)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - first


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.activation_checkpointing = False
        self._rope: tuple[torch.Tensor, float] | None = None
        if cfg.rope_scaling is not None:
            self._rope = rope_inv_freq(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for matmuls and embeddings; output projections scaled by 1/sqrt(2 n_layer)
        (zeros with `zero_init_proj`); ones for norms, zeros for biases."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif p.ndim == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight", "experts.down_proj")):
                if self.cfg.zero_init_proj:
                    nn.init.zeros_(p)
                    continue
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final-norm hidden state (B, T, d_model): what the lm head (or a reward head) reads.

        `attn_mask` (B, 1, T, keys) bool, True = may attend, replaces the causal mask: batched
        generation of left-padded prompts (llmctl.model.generate) passes one that hides the padding."""
        b, t = input_ids.shape
        mask = None
        if doc_ids is not None:
            if kv_cache is not None:
                raise UsageError("doc_ids and kv_cache cannot be combined")
            same = doc_ids[:, :, None] == doc_ids[:, None, :]
            causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
            mask = (same & causal)[:, None]  # (B, 1, T, T)
            if positions is None:
                positions = positions_from_doc_ids(doc_ids)
        if positions is None:
            start = kv_cache.pos if kv_cache is not None else 0
            positions = torch.arange(start, start + t, device=input_ids.device).expand(b, t)
        if kv_cache is not None and kv_cache.pos > 0 and t > 1:  # a chunk after a cached prefix
            past = kv_cache.pos
            mask = torch.ones(t, past + t, dtype=torch.bool, device=input_ids.device).tril(diagonal=past)
        if attn_mask is not None:
            mask = attn_mask
        w = self.cfg.sliding_window
        if w is not None and int(positions.max()) >= w:  # a key is seen from the w queries at and after it
            if attn_mask is not None:
                raise UsageError(
                    f"sequence of {int(positions.max()) + 1} tokens exceeds the model's sliding window {w} "
                    "(batched generation past the window is not implemented)"
                )
            past = kv_cache.pos if kv_cache is not None else 0
            if kv_cache is not None:  # keys: the cached tokens and these, at positions 0 .. past + t - 1
                kpos = torch.arange(past + t, device=input_ids.device).expand(b, past + t)
            else:
                kpos = positions
            band = kpos[:, None, :] > positions[:, :, None] - w
            if mask is None:
                mask = torch.ones(t, past + t, dtype=torch.bool, device=input_ids.device).tril(diagonal=past)
            mask = mask & band[:, None]
        inv, attn_factor = self._rope if self._rope is not None else (None, 1.0)
        if inv is not None and inv.device != positions.device:
            self._rope = inv, attn_factor = inv.to(positions.device), attn_factor
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_base, self.cfg.rope_scale, inv, attn_factor)
        x = self.embed_tokens(input_ids)
        for block in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, mask, kv_cache, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += t
        return self.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_hidden: bool = False,
        keep: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ):
        """Logits (B, T, vocab) in fp32; with `return_hidden=True`, (logits, hidden).

        `keep` (a (B, T) bool mask) computes the lm head only where it is True and returns (N, vocab)
        logits in row-major order: DPO needs log-probs of response tokens only, and on preference
        data the prompt is most of each row, so this skips most of the head and its softmax.
        """
        h = self.hidden_states(input_ids, positions, doc_ids, kv_cache, attn_mask)
        logits = self.logits(h if keep is None else h[keep])
        return (logits, h) if return_hidden else logits

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The lm head on hidden states, in fp32, soft-capped when `logit_softcap` > 0."""
        logits = self.lm_head(h).float()
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    # -- derived figures printed at start
    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        if non_embedding:
            n -= self.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward); an MoE counts its active parameters only."""
        c = self.cfg
        n = self.num_params(non_embedding=True) + (0 if not c.tie_embeddings else c.vocab_size * c.d_model)
        n -= inactive_params(c)
        return 6 * n + 12 * c.n_layer * c.d_model * seq_len


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy over targets that are not `ignore_index`."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=ignore_index)
