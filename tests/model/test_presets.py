"""`PRESETS` is the one list of model presets: `--preset`'s help lists exactly them, in order."""

from __future__ import annotations

import re

from typer.main import get_command

from llmctl.cli import app
from llmctl.model.transformer import PRESETS


def test_preset_help_lists_the_registry():
    cmd = get_command(app).get_command(None, "pretrain")
    text = next(p.help for p in cmd.params if "--preset" in p.opts)
    names = [re.match(r"[\w][\w.-]*", seg).group(0).rstrip(".") for seg in text.split(": ", 1)[1].split(" | ")]
    assert names == list(PRESETS)
