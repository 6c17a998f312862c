"""`llmctl plan`'s FLOPs per token equal torch.utils.flop_counter's count of a real training step."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from llmctl.model.transformer import ModelConfig, Transformer, cross_entropy, preset_config
from llmctl.plan.flops import flops_per_token, register_cpu_formulas
from llmctl.plan.memory import meta_model


@pytest.mark.parametrize(
    "cfg",
    [
        preset_config("tiny", 512),
        ModelConfig(vocab_size=512, n_head=4, n_kv_head=2, d_model=64, tie_embeddings=False),
        preset_config("moe-tiny", 512, n_shared_experts=1),  # routed experts run through grouped_mm
    ],
    ids=["dense", "gqa-untied", "moe"],
)
def test_flops_per_token_equal_the_flop_counter(cfg):
    register_cpu_formulas()
    torch.manual_seed(0)
    model = Transformer(cfg)
    b, t = 2, 64
    x = torch.randint(0, cfg.vocab_size, (b, t))
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):  # attention as bmm: counted
        cross_entropy(model(x), x).backward()
    measured = counter.get_total_flops() / (b * t)
    assert flops_per_token(meta_model(cfg), t) == pytest.approx(measured, rel=1e-9)


def test_cpu_flash_attention_is_counted_once_registered():
    register_cpu_formulas()
    model = Transformer(preset_config("tiny", 512))
    x = torch.randint(0, 512, (1, 64))
    with FlopCounterMode(display=False) as counter:
        model(x)
    attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    assert counter.get_flop_counts()["Global"][attention] == 4 * 64 * 64 * 64 * 2  # QK^T and AV, 2 layers
