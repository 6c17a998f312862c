"""The eval tasks. `TASKS` is the only place a task is named: `llmctl eval --task`, the eval config's
sections, the required-input checks and the runner's dispatch all come from it (README.md here:
adding a task). Entries name their module and objects as strings, so reading the registry (as
`llmctl --help` does) imports no task and no torch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any


@dataclass(frozen=True)
class Task:
    """One eval task.

    `run(lm, cfg, batch_size, progress=None, *, model, device)` returns (result rows, lineage
    records) or (rows, lineage, `llmctl.eval.base.Samples`); `lm` is MODEL loaded as an
    `llmctl.eval.lm.LM`, or None when no task of the eval needs one.
    """

    name: str  # --task NAME, the config section NAME and the `task` column of its rows
    module: str  # the file in this package holding `config`, `run` and `check`
    config: str  # its config dataclass
    run: str = "run"
    model: str = "lm"  # how it reads MODEL: "lm" (loaded as a language model), "path" (itself), "none"
    flags: tuple[tuple[str, str], ...] = ()  # (shared `llmctl eval` flag, option it sets)
    required: tuple[str, ...] = ()  # options without a default: the task refuses to run unset
    check: str = ""  # check(cfg): raises UsageError on options it cannot run with, before the model loads

    def _get(self, attr: str) -> Any:
        return getattr(import_module(f"{__name__}.{self.module}"), attr)

    def config_class(self) -> type:
        return self._get(self.config)

    def runner(self) -> Callable[..., tuple]:
        return self._get(self.run)

    def checker(self) -> Callable[[Any], None] | None:
        return self._get(self.check) if self.check else None

    def flag(self, option: str) -> str | None:
        """The shared flag that sets `option`, if one does."""
        return next((f for f, o in self.flags if o == option), None)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("perplexity", "perplexity", "PerplexityConfig", flags=(("--ppl-data", "data"),), required=("data",)),
        Task(
            "mc",
            "mc",
            "MCConfig",
            flags=(("--mc-data", "data"), ("--shots", "shots"), ("--choices", "choices"), ("--chat", "chat")),
            required=("data",),
        ),
        Task(
            "exact_match",
            "exact_match",
            "ExactMatchConfig",
            flags=(("--em-data", "data"), ("--chat", "chat")),
            required=("data",),
            check="check",
        ),
        Task(
            "degeneration",
            "degeneration",
            "DegenerationConfig",
            flags=(("--prompts", "prompts"),),
            required=("prompts",),
        ),
        Task(
            "contamination",
            "contamination",
            "ContaminationConfig",
            model="none",
            flags=(("--items", "data"), ("--train-data", "train")),
            required=("train", "data"),
        ),
        Task(
            "prefs",
            "prefs",
            "PrefsConfig",
            run="run_prefs",
            model="path",
            flags=(("--prefs-data", "data"), ("--reward-model", "reward_model")),
            required=("data",),
        ),
        Task(
            "winrate",
            "prefs",
            "WinrateConfig",
            run="run_winrate",
            flags=(("--prompts", "prompts"), ("--reward-model", "reward_model"), ("--baseline", "baseline")),
            required=("prompts", "baseline"),
        ),
        Task(
            "stop_rate",
            "stop_rate",
            "StopRateConfig",
            flags=(("--prompts", "prompts"),),
            required=("prompts",),
            check="check",
        ),
        Task(
            "judge",
            "judge",
            "JudgeConfig",
            flags=(
                ("--prompts", "prompts"),
                ("--baseline", "baseline"),
                ("--judge", "judge"),
                ("--judge-url", "judge_url"),
                ("--judge-model", "judge_model"),
                ("--judge-prompt", "prompt_file"),
            ),
            required=("prompts", "baseline"),
            check="check",
        ),
        Task(
            "lm_eval",
            "lm_eval_task",
            "LmEvalConfig",
            flags=(("--lm-eval-include", "include"), ("--shots", "shots"), ("--chat", "chat")),
            check="check",
        ),
    )
}


def tasks_with_flag(flag: str) -> list[str]:
    """The tasks a shared `llmctl eval` flag sets an option of, in registry order."""
    return [t.name for t in TASKS.values() if any(f == flag for f, _ in t.flags)]
