"""`--help` as a new user reads it: pipeline order, plain metavars, paragraphs rich wraps itself,
readable at 80 columns, every default shown the same way and equal to what a run uses."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from llmctl import config as C
from llmctl.cli import app
from llmctl.cli.help import ORDER, unwrap

COMMANDS = [
    ["filter"],
    ["quality", "train"],
    ["quality", "predict"],
    ["tokenize", "train"],
    ["tokenize", "encode"],
    ["tokenize", "inspect"],
    ["mix"],
    ["pretrain"],
    ["generate"],
    ["sft"],
    ["reward"],
    ["reward", "train"],
    ["reward", "score"],
    ["dpo"],
    ["rl"],
    ["eval"],
    ["export"],
    ["plot"],
    ["sweep", "run"],
    ["sweep", "fit"],
    ["sweep", "check"],
    ["data", "import"],
    ["run"],
    ["report"],
]


def help_text(args: list[str], columns: int = 100) -> str:
    r = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    return r.output


def rows(text: str) -> list[str]:
    """The lines inside the help's panels, without their borders."""
    return [ln.strip("│ ").rstrip() for ln in text.splitlines() if ln.startswith("│")]


def test_commands_are_listed_in_pipeline_order():
    listed = [ln.split()[0] for ln in rows(help_text([])) if ln and not ln.startswith("-") and ln[0] != " "]
    listed = [c for c in listed if c in ORDER]
    assert listed == [
        "filter",
        "quality",
        "tokenize",
        "mix",
        "pretrain",
        "generate",
        "sft",
        "reward",
        "dpo",
        "rl",
        "eval",
        "export",
        "plot",
        "sweep",
        "data",
        "run",
        "report",
    ]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_metavars_are_plain_and_defaults_shown_one_way(args):
    text = help_text(args)
    for typer_style in ("<bool>", "<str>", "<int", "<float", "<list[", "{", "x>="):
        assert typer_style not in text, (args, typer_style)  # e.g. `filter [OPTIONS] INPUTS...`, not {inputs}...
    assert "(default" not in text.lower(), "a default written in the help text instead of [default: ...]"


@pytest.mark.parametrize("args", [["report"], ["filter"], ["pretrain"], ["dpo"], ["eval"]], ids=" ".join)
def test_paragraphs_are_not_hard_wrapped(args):
    """rich wraps each paragraph to the terminal; a docstring's own line breaks must not survive."""
    text = help_text(args, columns=400)
    from typer.main import get_command

    cmd = get_command(app)
    for a in args:
        cmd = cmd.get_command(None, a)
    paras = unwrap(cmd.help).split("\n\n")
    assert len(paras) >= 1 and all(p.strip() in text for p in paras), paras


def test_filter_help_is_readable_at_80_columns():
    text = help_text(["filter"], columns=80)
    assert "…" not in text  # nothing cut off (defaults were truncated)
    widths, panel = {}, None
    for ln in text.splitlines():
        if ln.startswith("╭"):
            panel = ln.strip("╭─╮ ")
        elif ln.startswith("│") and panel:
            body = ln[1:-1]
            indent = len(body) - len(body.lstrip())
            if body.strip() and indent > 12:  # a description's continuation line: where that column starts
                widths[panel] = min(widths.get(panel, 99), len(body) - indent)
    assert set(widths) >= {"Options", "Dedup", "Quality classifier", "Execution"}
    assert min(widths.values()) >= 30, widths  # descriptions were squeezed to ~17 characters


@pytest.mark.parametrize(
    "stage,cls_path",
    [
        ("sft", "llmctl.train.sft.SFTConfig"),
        ("dpo", "llmctl.train.dpo.DPOConfig"),
        ("pretrain", "llmctl.train.pretrain.PretrainConfig"),
    ],
)
def test_training_defaults_shown_are_the_stage_defaults(stage, cls_path):
    import importlib

    mod, name = cls_path.rsplit(".", 1)
    cfg = C.load(getattr(importlib.import_module(mod), name))
    want = {"--steps": cfg.train.steps, "--lr": cfg.train.lr, "--warmup": cfg.train.warmup_steps}
    if stage != "pretrain":
        want["--max-len"] = cfg.max_len
    flat = " ".join(help_text([stage], columns=200).split())
    for opt, value in want.items():
        shown = re.search(rf"{opt} \w+ .*?\[default: ([^\]]+)\]", flat)
        assert shown and float(shown.group(1)) == float(value), (stage, opt, shown and shown.group(1), value)


def test_reward_help_shows_that_prefs_train_directly():
    text = help_text(["reward"])
    assert "llmctl reward PREFS --from CKPT -o RUN" in text and "llmctl reward score RM DATA -o OUT" in text
    assert "llmctl reward train --help" in text
