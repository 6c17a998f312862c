"""Fixtures several test modules share.

`toy_run`: the shipped toy pipeline (pipelines/toy.yaml) end to end, once per session, with its
stages and flags as shipped except the step counts (`SHORT`; reward and dpo score their 310 held-out pairs once), so it takes well under a minute on
2 cores. tests/test_toy_pipeline.py checks it the way a user would; tests/test_readme_commands.py
runs the READMEs' commands against it.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOY = REPO / "pipelines" / "toy.yaml"
SHORT = {
    "pretrain": (60, 20),
    "sft": (20, 10),
    "grpo": (4, 4),
    "reward": (10, 10),
    "dpo": (10, 10),
}  # (steps, eval_every)


def shortened(text: str) -> str:
    """pipelines/toy.yaml with fewer steps (and evaluations, checkpoints to match), eval on 5 items a task."""
    for name, (steps, every) in SHORT.items():
        line = re.search(rf"- name: {name}\n(?:    [a-z]+: .*\n)*?    run: .*", text).group(0)
        short = re.sub(r"--steps \d+", f"--steps {steps}", line)
        short = re.sub(r"--eval-every \d+", f"--eval-every {every}", short)
        short = re.sub(r"--ckpt-every \d+", f"--ckpt-every {steps}", short)
        text = text.replace(line, short)
    text = text.replace(" --set prefs.limit=0", "")  # eval: --limit for prefs too
    text = re.sub(r"(\.limit=)\d+", r"\g<1>5", text)
    return re.sub(r"(eval .*?)--limit \d+", r"\1--limit 5", text, flags=re.S)  # every task, on fewer items


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """(shortened pipeline file, run root, stage records) of one run from the repository root."""
    from llmctl.cli.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("toy")
    pipe = tmp / "toy.yaml"
    pipe.write_text(shortened(TOY.read_text()))
    root = tmp / "run"
    with contextlib.chdir(REPO):  # the pipeline's paths (examples/...) are relative to the repository
        records = run_pipeline(pipe, root, echo=lambda m: None)
    return pipe, root, records


@pytest.fixture()
def in_repo_copy(tmp_path, monkeypatch) -> Path:
    """A working directory where the READMEs' relative paths (examples/, pipelines/, tests/fixtures/,
    scripts/) resolve to the repository's, and their outputs (out/, runs/, hf/, loss.png) land in tmp."""
    for name in ("examples", "pipelines", "scripts"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "fixtures").symlink_to(REPO / "tests" / "fixtures")
    monkeypatch.chdir(tmp_path)
    return tmp_path
