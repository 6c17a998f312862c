"""The one Typer app every command module registers on, and the CLI's shared options."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl import __version__
from llmctl.cli.help import LlmctlGroup

app = typer.Typer(
    name="llmctl",
    cls=LlmctlGroup,
    help="From a raw web crawl to an evaluated, aligned language model. "
    "Every stage reads and writes Parquet datasets with a _manifest.json (lineage, config, stats).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Options most stages share. Defaults are None so that only flags the user gave override the
# config file (see llmctl.config.load).
ConfigOpt = Annotated[
    Optional[str], typer.Option("--config", "-c", help="YAML or TOML file with this stage's options.")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override any config option: --set section.key=value (repeatable)."),
]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an output directory that holds a different run's output.")
]
PrintConfigOpt = Annotated[
    bool,
    typer.Option(
        "--print-config",
        help="Print the resolved config (the stage's defaults with --config, --set and the flags applied) as YAML and exit.",
    ),
]
WorkersOpt = Annotated[
    Optional[int],
    typer.Option(
        "--workers",
        "-w",
        min=1,
        rich_help_panel="Execution",
        help="Worker processes (default: all cores). With --executor ray: the CPUs of a local Ray instance; on an existing cluster, Ray schedules on all its CPUs.",
    ),
]

ExecutorOpt = Annotated[
    Optional[str],
    typer.Option(
        "--executor",
        rich_help_panel="Execution",
        help="Where shard tasks run: local (processes on this machine) or ray.",
    ),
]
RayAddressOpt = Annotated[
    Optional[str],
    typer.Option(
        "--ray-address",
        rich_help_panel="Execution",
        help="Ray cluster with --executor ray: auto (this machine's cluster, else a local Ray instance), "
        "HOST:6379 or ray://HOST:10001.",
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """From a raw web crawl to an evaluated, aligned language model."""
