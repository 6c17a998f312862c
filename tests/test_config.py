"""Config resolution: defaults < file (YAML/TOML) < --set < flags; bad keys are one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from llmctl.config import load, output_fields, runtime
from llmctl.errors import UsageError


@dataclass
class Inner:
    enabled: bool = True
    min_words: int = 5
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    rate: float = 0.5
    workers: int | None = runtime(None)


def test_precedence_yaml_set_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rate: 0.25\ninner:\n  min_words: 3\n  names: [x, y]\n")
    cfg = load(Outer, f)
    assert cfg.rate == 0.25 and cfg.inner.min_words == 3 and cfg.inner.names == ["x", "y"] and cfg.inner.enabled
    cfg = load(Outer, f, sets=["inner.min_words=7", "inner.enabled=false"])
    assert cfg.inner.min_words == 7 and cfg.inner.enabled is False
    cfg = load(Outer, f, sets=["inner.min_words=7"], flags={"inner.min_words": 9, "rate": None})
    assert cfg.inner.min_words == 9 and cfg.rate == 0.25


def test_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("rate = 1.5\n[inner]\nmin_words = 2\n")
    cfg = load(Outer, f)
    assert cfg.rate == 1.5 and cfg.inner.min_words == 2


def test_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown config option inner.min_word;"):
        load(Outer, sets=["inner.min_word=3"])
    with pytest.raises(UsageError, match="inner.min_words: expected int"):
        load(Outer, sets=["inner.min_words=lots"])
    with pytest.raises(UsageError, match="config file not found"):
        load(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rate: [1, 2\n")
    with pytest.raises(UsageError, match="cannot parse config"):
        load(Outer, bad)


def test_runtime_fields_not_in_output_identity():
    assert "workers" not in output_fields(Outer(workers=3))
    assert output_fields(Outer(workers=3)) == output_fields(Outer(workers=1))


def test_shipped_stage_configs_parse():
    """Every stage config shipped in pipelines/ loads into its dataclass (unknown keys would fail)."""
    from pathlib import Path

    from llmctl.data.filter import FilterConfig

    cfg = load(FilterConfig, Path("pipelines/filter.yaml"))
    assert cfg.c4.min_words_per_line == 5 and cfg.steps[0] == "gopher_repetition"
