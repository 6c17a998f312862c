"""Commands: llmctl run (a whole pipeline from a YAML file) and llmctl report (one HTML page of a run)."""

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
    until: Annotated[
        Optional[str], typer.Option("--until", help="Run the stages up to and including this one.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Run every selected stage again from nothing (its output removed first).")
    ] = False,
) -> None:
    """Run a pipeline's stages in order; up-to-date stages are skipped, the first failure stops the run.
    At the end, when the pipeline evaluates a stage and the stage it started from (`--from`), a table
    of each such stage's effect: the metrics both evaluations report, before, after and the change."""
    from llmctl.cli.runner import effects_table, run_pipeline, stage_effects  # pyarrow: kept out of --help

    records = run_pipeline(
        pipeline,
        output,
        only=only,
        until=until,
        force=force,
        echo=lambda m: out.print(escape(m), style="bold cyan", highlight=False),
    )
    ran = [r for r in records if r["status"] == "ran"]
    effects = stage_effects(pipeline, output)
    if effects:
        out.print(effects_table(effects))
    out.print(f"pipeline done: {len(ran)} stage(s) ran, {len(records) - len(ran)} up to date; outputs in {output}")


@app.command("report")
def report_cmd(
    root: Annotated[str, typer.Argument(help="Run root written by `llmctl run` (or any folder of stage outputs).")],
    output: Annotated[
        Optional[str], typer.Option("--output", "-o", help="Report folder (default ROOT/report).")
    ] = None,
) -> None:
    """Write one HTML page with PNG charts: filter funnel, tokens per split, loss curves, DPO margins,
    the eval table and the lineage from crawl files to the final checkpoint."""
    from llmctl.report.build import build_report  # pyarrow: kept out of --help

    index = build_report(root, output)
    out.print(f"wrote {index}")
