"""The eval task registry is the one list of tasks: the config, the CLI and the runner agree with it."""

from __future__ import annotations

import dataclasses
import inspect

from typer.main import get_command

from llmctl.cli import app
from llmctl.eval.runner import EvalConfig
from llmctl.eval.tasks import TASKS


def eval_options() -> set[str]:
    cmd = get_command(app).get_command(None, "eval")
    return {o for p in cmd.params for o in p.opts}


def test_config_has_one_section_per_task_in_registry_order():
    names = [f.name for f in dataclasses.fields(EvalConfig)]
    assert names == ["tasks", "model", "tokenizer", *TASKS, "batch_size", "device", "progress"]
    for name, spec in TASKS.items():
        assert isinstance(getattr(EvalConfig(), name), spec.config_class())


def test_every_entry_resolves_and_names_real_options():
    opts = eval_options()
    for name, spec in TASKS.items():
        assert spec.model in ("lm", "path", "none"), name
        fields = {f.name for f in dataclasses.fields(spec.config_class())}
        assert "limit" in fields, f"{name}: --limit sets every task's limit"
        assert set(spec.required) <= fields and {o for _, o in spec.flags} <= fields, name
        assert {f for f, _ in spec.flags} <= opts, f"{name}: a flag `llmctl eval` does not have"
        params = inspect.signature(spec.runner()).parameters
        assert list(params)[:4] == ["lm", "cfg", "batch_size", "progress"], name
        assert params["model"].kind is params["device"].kind is inspect.Parameter.KEYWORD_ONLY, name
        if spec.check:
            assert callable(spec.checker()), name


def test_cli_lists_the_registry():
    cmd = get_command(app).get_command(None, "eval")
    task_help = next(p.help for p in cmd.params if "--task" in p.opts)
    listed = [t for t in TASKS if t != "lm_eval"] + ["lm-eval:NAME[,NAME...]"]  # lm_eval is named by its prefix
    assert task_help.startswith(" | ".join(listed))
