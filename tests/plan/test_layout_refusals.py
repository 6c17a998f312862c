"""A layout the trainer refuses, `llmctl plan` refuses with the same one line, before any model is built."""

from __future__ import annotations

import pytest

from llmctl.errors import UsageError
from llmctl.model import transformer
from llmctl.model.transformer import ModelConfig, preset_config
from llmctl.plan import Layout, plan
from llmctl.train import parallel as P
from llmctl.train.loop import TrainConfig

BAD = [  # (config, world, tp, sequences a step, what the message names)
    (preset_config("350m", 50304), 6, 3, 64, "n_head=16"),
    (ModelConfig(vocab_size=4096, n_head=8, n_kv_head=4, d_model=256), 8, 8, 64, "n_kv_head=4"),
    (preset_config("124m", 50304), 64, 1, 32, "more ranks than samples"),
    (preset_config("moe-tiny", 4096), 4, 2, 64, "MoE layers"),
    (preset_config("tiny", 4096), 6, 4, 64, "does not divide the 6 processes"),
]


@pytest.fixture
def no_model(monkeypatch):
    def refuse(self, cfg):
        raise AssertionError("a model was built for a refused layout")

    monkeypatch.setattr(transformer.Transformer, "__init__", refuse)


@pytest.mark.parametrize("cfg,world,tp,batch,named", BAD, ids=[b[-1] for b in BAD])
def test_plan_refuses_what_the_trainer_refuses(no_model, cfg, world, tp, batch, named):
    with pytest.raises(UsageError, match=named) as planned:
        plan(cfg, Layout(world, tp), seq_len=256, batch_size=batch)
    with pytest.raises(UsageError) as trainer:  # the checks pretrain runs, in its order
        P.check_layout(world, tp)
        P.check_divisible(cfg, tp)
        TrainConfig(batch_size=batch, micro_batch=1).grad_accum(world // tp)
    assert str(trainer.value) == str(planned.value)
    assert "\n" not in str(planned.value)


def test_a_good_layout_is_admitted():
    p = plan(preset_config("tiny", 4096), Layout(8, 2, fsdp=True), seq_len=64, batch_size=8)
    assert p.grad_accum == 2 and p.memory.peak > 0
