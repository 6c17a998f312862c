"""Commands: llmctl run (a whole pipeline from a YAML file)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from llmctl.cli.app import app
from llmctl.cli.common import out


@app.command("run")
def run_cmd(
    pipeline: Annotated[str, typer.Argument(help="Pipeline YAML (e.g. pipelines/toy.yaml).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Run root: each stage writes ROOT/STAGE.")],
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Run only this stage (repeatable).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Run the stages up to and including this one.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Run stages even when they are up to date.")] = False,
) -> None:
    """Run a pipeline's stages in order; up-to-date stages are skipped, the first failure stops the run."""
    from llmctl.pipeline import run_pipeline

    records = run_pipeline(pipeline, output, only=only, until=until, force=force,
                           echo=lambda m: out.print(escape(m), style="bold cyan", highlight=False))
    ran = [r for r in records if r["status"] == "ran"]
    out.print(f"pipeline done: {len(ran)} stage(s) ran, {len(records) - len(ran)} up to date; outputs in {output}")
