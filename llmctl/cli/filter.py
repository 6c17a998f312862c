"""`llmctl filter`: crawl files to clean documents."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmctl.cli.app import ConfigOpt, OverwriteOpt, SetOpt, WorkersOpt, app
from llmctl.cli.common import out, print_config, print_funnel


@app.command("filter")
def filter_cmd(
    inputs: Annotated[list[str], typer.Argument(help="WARC/WET/JSONL(.gz)/Parquet files, globs, directories or llmctl datasets.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output dataset directory.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    steps: Annotated[Optional[str], typer.Option(help="Comma-separated steps in order (default: gopher_repetition,gopher_quality,c4,pii).")] = None,
    no_c4: Annotated[bool, typer.Option("--no-c4", help="Skip the C4 rules.")] = False,
    no_gopher: Annotated[bool, typer.Option("--no-gopher", help="Skip the Gopher quality and repetition rules.")] = False,
    no_pii: Annotated[bool, typer.Option("--no-pii", help="Skip the PII scrub.")] = False,
    no_rejected: Annotated[bool, typer.Option("--no-rejected", help="Do not write removed documents to OUT/rejected/.")] = False,
    workers: WorkersOpt = None,
    overwrite: OverwriteOpt = False,
    print_config_: Annotated[bool, typer.Option("--print-config", help="Print the resolved config as YAML and exit.")] = False,
) -> None:
    """Extract text from a crawl and keep the documents that pass C4, Gopher and PII steps.

    Writes OUT/part-*.parquet (kept documents), OUT/rejected/ (removed documents with the rule
    that removed them) and OUT/_manifest.json (config, inputs, funnel). Re-running the same
    command resumes an interrupted run.
    """
    from llmctl import config as C
    from llmctl.data.filter import FilterConfig, run_filter

    flags = {"steps": steps, "workers": workers, "c4.enabled": False if no_c4 else None,
             "gopher_quality.enabled": False if no_gopher else None,
             "gopher_repetition.enabled": False if no_gopher else None,
             "pii.enabled": False if no_pii else None, "write_rejected": False if no_rejected else None}
    cfg = C.load(FilterConfig, config, set_, flags)
    if print_config_:
        print_config(cfg)
        return
    manifest = run_filter(inputs, output, cfg, overwrite=overwrite)
    print_funnel(manifest["stats"]["funnel"])
    t = manifest["timings"]
    out.print(f"wrote {manifest['num_rows']:,} documents in {len(manifest['shards'])} shards to {output} "
              f"({t.get('run_seconds', t['seconds'])} s)")
