"""The step registry (llmctl.data.steps.STEPS) is what the config, the funnel, the schema and the CLI use."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from typer.testing import CliRunner

from llmctl.cli import app
from llmctl.config import to_dict
from llmctl.data.document import META_COLUMNS
from llmctl.data.filter import FilterConfig, funnel
from llmctl.data.steps import STEP_NAMES, STEPS

# How `llmctl filter` turns each step on or off from the command line. A new step needs an entry:
# its own flag, or `--set NAME.key=value` when a flag would only clutter --help.
SWITCHES = {
    "url": ["--set", "url.blocklist=blocked.txt"],
    "decontaminate": ["--decontaminate", "mmlu"],
    "langid": ["--no-langid"],
    "gopher_repetition": ["--no-gopher"],
    "gopher_quality": ["--no-gopher"],
    "c4": ["--no-c4"],
    "pii": ["--no-pii"],
    "toxicity": ["--toxicity"],
    "quality": ["--quality-model", "MODEL"],
}


def test_filter_config_has_one_section_per_step_in_registry_order():
    names = [f.name for f in dataclasses.fields(FilterConfig)]
    assert names[names.index("extract") + 1 : names.index("dedup")] == list(STEP_NAMES)
    cfg = FilterConfig()
    for spec in STEPS:
        assert isinstance(getattr(cfg, spec.name), spec.config)
    assert cfg.steps == list(STEP_NAMES)


def test_reasons_columns_and_paths_are_the_steps_own():
    assert len({s.reason for s in STEPS}) == len(STEPS)
    columns = [c for s in STEPS for c in s.columns]
    assert sorted(columns) == sorted(META_COLUMNS)  # each metadata column is filled by one step
    for spec in STEPS:
        fields = {f.name for f in dataclasses.fields(spec.config)}
        assert set(spec.paths) <= fields, spec.name
        assert hasattr(spec.config(), "enabled"), spec.name


def test_funnel_orders_causes_by_the_registry():
    stats = {
        "read.docs": 4,
        "kept.docs": 0,
        "rejected.c4.bad_words.docs": 1,
        "rejected.gopher.word_count.docs": 1,
        "rejected.gopher_rep.dup_line_frac.docs": 1,
        "rejected.langid.docs": 1,
    }
    rows = [r["row"] for r in funnel(stats, list(STEP_NAMES))]
    assert rows == [
        "read",
        "rejected.langid",
        "rejected.gopher_rep.dup_line_frac",
        "rejected.gopher.word_count",
        "rejected.c4.bad_words",
        "kept",
    ]


def printed(args: list[str]) -> dict:
    r = CliRunner().invoke(app, ["filter", "IN", "-o", "OUT", *args, "--print-config"])
    assert r.exit_code == 0, r.output
    return yaml.safe_load(r.output)


def test_every_step_has_a_cli_switch():
    assert set(SWITCHES) == set(STEP_NAMES)


@pytest.mark.parametrize("name", STEP_NAMES)
def test_each_switch_changes_its_step_section(name):
    default = to_dict(FilterConfig())
    got = printed(SWITCHES[name])
    assert got[name] != default[name]
    assert {k: v for k, v in got.items() if k not in SWITCHES} == {
        k: v for k, v in default.items() if k not in SWITCHES
    }
