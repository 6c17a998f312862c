"""Command: llmctl mix. Registered on the shared app by importing this module."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from llmctl import config as C
from llmctl.cli.app import ConfigOpt, OverwriteOpt, PrintConfigOpt, SetOpt, WorkersOpt, app
from llmctl.cli.common import out, print_config
from llmctl.errors import UsageError


def print_mix_table(stats: dict[str, Any], title: str = "mixture") -> None:
    """Per source: target and realized share of the train tokens, tokens, documents, epochs."""
    table = Table(title=title, title_justify="left")
    for col in ("source", "target", "realized", "tokens", "documents", "epochs", "val docs"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for r in stats["mix"]["sources"]:
        table.add_row(
            r["name"],
            f"{100 * r['target_proportion']:.2f}%",
            f"{100 * r['proportion']:.2f}%",
            f"{r['tokens']:,}",
            f"{r['documents']:,}",
            f"{r['epochs']:.2f}",
            f"{r['val_documents']:,}",
        )
    table.add_row(
        "total",
        "100%",
        "100%",
        f"{stats['train']['tokens']:,}",
        f"{stats['train']['documents']:,}",
        "",
        f"{stats['val']['documents']:,}",
        style="bold",
    )
    out.print(table)


@app.command("mix")
def mix_cmd(
    output: Annotated[str, typer.Option("--output", "-o", help="Output token dataset directory.")],
    source: Annotated[
        Optional[list[str]],
        typer.Option(
            "--source",
            "-s",
            help="NAME=PATH[:WEIGHT] or NAME=PATH:EPOCHSx, a token dataset (repeatable); no weight: its natural size.",
        ),
    ] = None,
    weight: Annotated[
        Optional[list[str]],
        typer.Option("--weight", help="NAME=WEIGHT (or NAME=EPOCHSx): change one source of the mix file (repeatable)."),
    ] = None,
    tokens: Annotated[
        Optional[str],
        typer.Option(
            "--tokens",
            help="Training-token budget: 10M, 2.5B, or 'largest' (one epoch of the largest weighted source; default).",
        ),
    ] = None,
    temperature: Annotated[
        Optional[float],
        typer.Option(
            "--temperature",
            help="Sampling temperature T: p ~ weight^(1/T); T > 1 flattens towards small sources (default 1).",
        ),
    ] = None,
    max_epochs: Annotated[
        Optional[float],
        typer.Option("--max-epochs", help="Most passes a weighted source may take (default 1: no repetition)."),
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the document order and of the subsets.")] = None,
    shard_tokens: Annotated[
        Optional[int], typer.Option("--shard-tokens", help="Tokens per output shard (default 4,000,000).")
    ] = None,
    workers: WorkersOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
    print_config_: PrintConfigOpt = False,
) -> None:
    """Mix token datasets by sampling proportion or epochs into one token dataset.

    The table comes from --source flags or a mix file (--config mix.yaml: a `sources` table of NAME: path + weight or epochs, then
    tokens, temperature, max_epochs, seed); `pretrain --mix mix.yaml` streams the same mixture without a copy.
    Upsampled sources repeat whole documents, one shuffled pass after another; downsampled ones take a
    seeded subset; every source's val split is carried once. The manifest and this table give per source
    the target and realized share, tokens, documents and epochs.
    """
    from llmctl.data.mix import run_mix  # pyarrow: kept out of --help
    from llmctl.data.mix_plan import MixConfig, apply_weights, parse_source  # pyarrow: kept out of --help

    flags = {
        "tokens": tokens,
        "temperature": temperature,
        "max_epochs": max_epochs,
        "seed": seed,
        "shard_tokens": shard_tokens,
        "workers": workers,
    }
    cfg = C.load(MixConfig, config, set_, flags)
    if source:
        table: dict[str, Any] = dict(cfg.sources)
        given: set[str] = set()  # a --source replaces the config file's source of its name, not another --source
        for spec in source:
            name, entry = parse_source(spec)
            if name in given:
                raise UsageError(f"--source {name!r} given twice; each source needs its own name")
            given.add(name)
            table[name] = entry
        cfg.sources = table
    cfg.sources = apply_weights(cfg.sources, weight or [])
    if print_config_:
        return print_config(cfg)
    m = run_mix(cfg, output, overwrite=overwrite)
    print_mix_table(m["stats"])
    t = m["timings"]
    out.print(
        f"wrote {m['stats']['tokens']:,} tokens ({m['stats']['train']['tokens']:,} train) for "
        f"{m['stats']['documents']:,} documents in {len(m['shards'])} shards to {output} "
        f"({t.get('run_seconds', t['seconds'])} s)"
    )
