"""Each training registry is the one list of its names: the CLI help lists exactly them, the config
accepts exactly them; and the `length` RL reward."""

from __future__ import annotations

import re

import pytest
from typer.main import get_command

from llmctl.cli import app
from llmctl.errors import UsageError
from llmctl.train.dpo import DPOConfig
from llmctl.train.dpo_loss import LOSS_TYPES
from llmctl.train.rl.algos import ALGOS
from llmctl.train.rl.core import GRPO_LOSS_TYPES
from llmctl.train.rl.rewards import REWARDS, Rewards, length_reward
from llmctl.train.rl.trainer import RLConfig


def option_help(command: str, flag: str) -> str:
    cmd = get_command(app).get_command(None, command)
    return next(p.help for p in cmd.params if flag in p.opts)


def listed(help_text: str) -> list[str]:
    """The names of a help text written as `[label: ]name (note) | name | ...`."""
    names = []
    for i, seg in enumerate(help_text.split(" | ")):
        if i == 0 and ": " in seg:
            seg = seg.rsplit(": ", 1)[1]
        names.append(re.match(r"[\w][\w:.-]*", seg).group(0).rstrip("."))
    return names


def test_rl_reward_help_lists_the_registry():
    assert listed(option_help("rl", "--reward")) == [*REWARDS, "MODULE:FUNC"]


def test_rl_algo_help_and_config_follow_the_registry():
    assert listed(option_help("rl", "--algo")) == list(ALGOS)
    for name, algo in ALGOS.items():
        cfg = RLConfig(algo=name)
        assert (cfg.epochs, cfg.beta) == (algo.default_epochs, algo.default_beta)
    with pytest.raises(UsageError, match=" or ".join(ALGOS)):
        RLConfig(algo="reinforce")


def test_grpo_loss_type_help_and_config_follow_the_registry():
    assert listed(option_help("rl", "--loss-type")) == list(GRPO_LOSS_TYPES)
    for name in GRPO_LOSS_TYPES:
        RLConfig(loss_type=name)
    with pytest.raises(UsageError, match=", ".join(GRPO_LOSS_TYPES)):
        RLConfig(loss_type="sum")


def test_dpo_loss_type_help_and_config_follow_the_registry():
    assert listed(option_help("dpo", "--loss-type")) == list(LOSS_TYPES)
    for name in LOSS_TYPES:
        DPOConfig(loss_type=name)
    with pytest.raises(UsageError, match=", ".join(LOSS_TYPES)):
        DPOConfig(loss_type="kto")


def test_unknown_reward_names_the_registry():
    with pytest.raises(UsageError, match=", ".join(REWARDS) + " or MODULE:FUNC"):
        Rewards(["nope"])


def test_rm_reward_needs_a_scorer():
    with pytest.raises(UsageError, match="reward rm needs --reward-model"):
        Rewards(["rm"])


def test_length_reward_is_minus_the_words():
    assert length_reward(["q", "q", "q"], ["one two three", "", "  a\nb  "]) == [-3.0, -0.0, -2.0]


def test_length_penalty_weighs_against_another_reward():
    rewards = Rewards(["format", "length"], [1.0, 0.1])
    comps = ["so #### 4", "the sum is four so the answer is #### 4", "no answer"]
    total, per = rewards(["q"] * 3, comps, [{"prompt": "q"}] * 3, [0, 1, 2])
    assert per["length"] == [-3.0, -10.0, -2.0]
    assert total == pytest.approx([1 - 0.3, 1 - 1.0, -0.2])
