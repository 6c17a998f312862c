"""The filter steps of `llmctl filter` and their registry, `STEPS`: the one place step names are listed.

FilterConfig's step sections, the default `steps` order, the funnel's order and the step objects a
run builds all come from `STEPS`; tests check the CLI's step flags and the document schema
against it. README.md beside this file says how to add a step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmctl.data.quality import QualityConfig, QualityFilter, model_lineage
from llmctl.data.steps import decont
from llmctl.data.steps.c4 import C4Config, C4Filter
from llmctl.data.steps.gopher import (
    GopherQualityConfig,
    GopherQualityFilter,
    GopherRepetitionConfig,
    GopherRepetitionFilter,
)
from llmctl.data.steps.langid import LangIdConfig, LangIdFilter
from llmctl.data.steps.pii import PIIConfig, PIIScrubber
from llmctl.data.steps.toxicity import ToxicityConfig, ToxicityFilter
from llmctl.data.steps.url import UrlConfig, UrlFilter, blocklist_lineage
from llmctl.errors import UsageError


@dataclass(frozen=True)
class StepSpec:
    """One filter step.

    `name` is its name in `steps` and its config section (`--set NAME.key=value`); `config` is the
    section's dataclass, whose `enabled` says whether the step runs; `step(config)` builds the step
    (llmctl.data.document.Step), whose `name` attribute starts its drop reasons ("gopher_rep.*").
    `columns` are the DOCUMENT_SCHEMA columns it fills; `paths` the config fields holding a file or
    a list of files (made absolute before workers start); `lineage(config)`, when given, is the
    lineage record (or list of records) of the files it reads, added to the output's inputs when
    the step is on.
    """

    name: str
    config: type
    step: type
    columns: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    lineage: Callable[[Any], dict[str, Any] | list[dict[str, Any]]] | None = None

    @property
    def reason(self) -> str:
        """The first part of the reasons this step drops documents with."""
        return self.step.name


STEPS: tuple[StepSpec, ...] = (
    StepSpec("url", UrlConfig, UrlFilter, paths=("blocklist", "allowlist"), lineage=blocklist_lineage),
    StepSpec("langid", LangIdConfig, LangIdFilter, columns=("language", "language_score")),
    StepSpec("gopher_repetition", GopherRepetitionConfig, GopherRepetitionFilter),
    StepSpec("gopher_quality", GopherQualityConfig, GopherQualityFilter),
    StepSpec("c4", C4Config, C4Filter),
    StepSpec("pii", PIIConfig, PIIScrubber, columns=("pii_email", "pii_phone", "pii_ip")),
    StepSpec("toxicity", ToxicityConfig, ToxicityFilter, columns=("toxicity_score",)),
    StepSpec("decontaminate", decont.DecontConfig, decont.DecontFilter, paths=("sets",), lineage=decont.lineage),
    StepSpec(
        "quality",
        QualityConfig,
        QualityFilter,
        columns=("quality_score",),
        paths=("model",),
        lineage=lambda cfg: model_lineage(cfg.model),
    ),
)
BY_NAME: dict[str, StepSpec] = {s.name: s for s in STEPS}
STEP_NAMES: tuple[str, ...] = tuple(BY_NAME)  # the default order in which steps run


def build(names: list[str], sections: Callable[[str], Any]) -> list:
    """The enabled steps among `names`, in that order, each built from its config `sections(name)`."""
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise UsageError(f"unknown filter step {unknown[0]!r}; steps: {', '.join(STEP_NAMES)}")
    steps = []
    for name in names:
        cfg = sections(name)
        if cfg.enabled:
            steps.append(BY_NAME[name].step(cfg))
    return steps
