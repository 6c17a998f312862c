"""The presets' sharding plans run one training step at 8, 64 and 256 ranks (fake process group, shapes
only), and hold the parameter shard `llmctl plan` says they do. Blocks repeat, so two layers stand for
the preset's depth; widths, heads, vocabulary and experts are the preset's."""

from __future__ import annotations

import pytest
from fake_helpers import fake_step

from llmctl.model.transformer import ModelConfig, preset_config
from llmctl.plan.layout import Layout, check_layout
from llmctl.plan.memory import meta_model, param_elements

VOCAB = 50304
LLAMA = dict(d_model=2048, n_head=32, n_kv_head=8, d_ff=8192, max_seq_len=2048, tie_embeddings=False)  # Llama-3.2-1B

pytestmark = pytest.mark.slow  # each layout trains a step (10 s in all): the full tier


def config(name: str) -> ModelConfig:
    if name == "llama":
        return ModelConfig(vocab_size=128256, n_layer=2, **LLAMA)
    return preset_config(name, VOCAB, n_layer=2)


CASES = [  # (model, world, tp, fsdp)
    ("124m", 8, 1, True),
    ("124m", 64, 4, True),
    ("124m", 256, 4, True),
    ("350m", 8, 8, False),
    ("350m", 64, 8, True),
    ("350m", 256, 8, True),
    ("olmoe", 8, 1, True),
    ("olmoe", 64, 1, True),
    ("olmoe", 256, 1, True),
    ("llama", 8, 8, False),
    ("llama", 64, 8, True),
    ("llama", 256, 8, True),
]


@pytest.mark.parametrize("name,world,tp,fsdp", CASES, ids=[f"{c[0]}@{c[1]}-tp{c[2]}" for c in CASES])
def test_layout_trains_one_step_and_holds_the_planned_shard(name, world, tp, fsdp):
    cfg = config(name)
    layout = Layout(world, tp, fsdp)
    check_layout(cfg, layout, batch_size=layout.dp, micro_batch=1)  # the plan admits it ...
    out = fake_step(cfg, world, tp, fsdp, seq_len=128)  # ... and the trainer's wrapping runs it
    vocab = cfg.vocab_size // tp if tp > 1 else cfg.vocab_size
    assert out["logits"].to_local().shape[-1] if tp > 1 else out["logits"].shape[-1] == vocab
    planned = param_elements(meta_model(cfg), layout)
    assert out["local_params"] == pytest.approx(planned, rel=0.02)  # FSDP2 pads uneven shards a little


def test_a_broken_tensor_parallel_plan_fails(monkeypatch):
    """o_proj split by output instead of input (Colwise for Rowwise): the fake step must not pass."""
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor import parallel as tp_mod

    real = tp_mod.parallelize_module

    def broken(module, mesh, plan):
        if "self_attn.o_proj" in plan:
            plan = {**plan, "self_attn.o_proj": tp_mod.ColwiseParallel(output_layouts=Shard(1))}
        return real(module, mesh, plan)

    monkeypatch.setattr(tp_mod, "parallelize_module", broken)
    with pytest.raises(RuntimeError, match="reduction dim"):
        fake_step(config("350m"), 64, 8, seq_len=128)
