"""Each training stage's flags start from that stage's own defaults; --print-config shows them.

A `train.*` flag used to rebuild `TrainConfig` with pretraining's defaults (lr 3e-4, warmup 100,
weight decay 0.1, ...) and throw the stage's own away; these tests change one flag and check
that exactly that one value moves.
"""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from llmctl.cli import app
from llmctl.config import load, to_dict
from llmctl.train.dpo import DPOConfig
from llmctl.train.pretrain import PretrainConfig
from llmctl.train.reward import RewardConfig
from llmctl.train.sft import SFTConfig

STAGES = {
    "pretrain": (["pretrain", "TOKENS", "-t", "TOK", "-o", "RUN"], PretrainConfig),
    "sft": (["sft", "DATA", "--from", "CK", "-o", "RUN"], SFTConfig),
    "reward": (["reward", "DATA", "--from", "CK", "-o", "RUN"], RewardConfig),
    "dpo": (["dpo", "DATA", "--from", "CK", "-o", "RUN"], DPOConfig),
}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def printed(args: list[str]) -> dict:
    r = CliRunner().invoke(app, args + ["--print-config"])
    assert r.exit_code == 0, r.output
    return _flat(yaml.safe_load(r.output))


@pytest.mark.parametrize("stage", list(STAGES))
def test_print_config_is_the_stage_defaults(stage):
    base, cls = STAGES[stage]
    assert printed(base) == _flat(to_dict(cls()))


@pytest.mark.parametrize(
    "stage,flag,value,key",
    [
        ("pretrain", "--steps", "7", "train.steps"),
        ("pretrain", "--warmup", "3", "train.warmup_steps"),
        ("sft", "--steps", "7", "train.steps"),
        ("sft", "--lr", "0.25", "train.lr"),
        ("sft", "--batch-size", "4", "train.batch_size"),
        ("reward", "--steps", "7", "train.steps"),
        ("reward", "--warmup", "3", "train.warmup_steps"),
        ("dpo", "--steps", "7", "train.steps"),
        ("dpo", "--lr", "0.25", "train.lr"),
        ("dpo", "--beta", "0.5", "beta"),
    ],
)
def test_one_flag_changes_one_value(stage, flag, value, key):
    base, _ = STAGES[stage]
    before, after = printed(base), printed(base + [flag, value])
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {key}
    assert str(after[key]) == value or float(after[key]) == float(value)


def test_set_and_config_file_keep_the_stage_defaults(tmp_path):
    f = tmp_path / "dpo.yaml"
    f.write_text("train:\n  steps: 5\n")
    cfg = load(DPOConfig, f, sets=["train.eval_every=2"])
    want = DPOConfig().train
    assert (cfg.train.steps, cfg.train.eval_every) == (5, 2)
    assert (
        (cfg.train.lr, cfg.train.weight_decay, cfg.train.warmup_steps, cfg.train.batch_size, cfg.train.micro_batch)
        == (want.lr, want.weight_decay, want.warmup_steps, want.batch_size, want.micro_batch)
        == (1e-5, 0.0, 10, 8, 4)
    )


def test_pretrain_print_config_resolves_the_batch():
    """batch_tokens / seq_len is the batch the loop uses: --print-config shows it."""
    out = printed(STAGES["pretrain"][0] + ["--seq-len", "128", "--batch-tokens", "2048"])
    assert out["train.batch_size"] == 16 and out["seq_len"] == 128


def test_warmup_not_shorter_than_the_run_is_a_warning(tmp_path, capsys):
    from align_helpers import synthetic_prefs, tiny_checkpoint, write_jsonl

    from llmctl.train.dpo import run_dpo

    ck = tiny_checkpoint(tmp_path / "ck")
    data = write_jsonl(tmp_path / "p.jsonl", synthetic_prefs(16))
    cfg = load(
        DPOConfig,
        sets=[
            "train.steps=2",
            "train.warmup_steps=5",
            "train.batch_size=4",
            "train.eval_every=0",
            "max_len=64",
            "val_fraction=0",
        ],
    )
    run_dpo(data, ck, tmp_path / "run", cfg)
    out = capsys.readouterr().out
    assert "warning: warmup (5 steps) is not shorter than the run (2 steps)" in out
    cfg.train.warmup_steps = 1
    run_dpo(data, ck, tmp_path / "run2", cfg)
    assert "warning: warmup" not in capsys.readouterr().out
