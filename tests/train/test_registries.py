"""Each training registry is the one list of its names: the CLI help lists exactly them, the config
accepts exactly them."""

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
from llmctl.train.rl.rewards import REWARDS, Rewards
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
