"""Commands: llmctl sweep [run] TOKENS | fit SWEEP | check SWEEP. Registered on the shared app by importing this module."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from llmctl.cli.app import ConfigOpt, ExecutorOpt, PrintConfigOpt, RayAddressOpt, SetOpt, app
from llmctl.cli.common import out, print_config
from llmctl.cli.help import LlmctlGroup
from llmctl.errors import UsageError


class SweepGroup(LlmctlGroup):
    """`llmctl sweep TOKENS ...` means `llmctl sweep run TOKENS ...`: the grid is the group's main command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


sweep_app = typer.Typer(
    cls=SweepGroup,
    no_args_is_help=True,
    help="Scaling-law sweeps: an IsoFLOP grid of pretrain runs, Chinchilla fits (approaches 2 and 3), "
    "a predicted compute-optimal shape for a larger budget, and a run that checks it.\n\n"
    "\b\nllmctl sweep TOKENS -t TOK -o runs/sweep --budgets 1e11,3e11,1e12   (same as `sweep run`)\n"
    "llmctl sweep fit runs/sweep          # fit.json, plots/, the prediction\n"
    "llmctl sweep check runs/sweep        # train the predicted shape, predicted vs actual loss",
)
app.add_typer(sweep_app, name="sweep")


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what}: expected comma-separated numbers such as 1e11,3e11,1e12, got {text!r}") from None


@sweep_app.command("run")
def run_cmd(
    tokens: Annotated[str, typer.Argument(help="Token dataset (from `llmctl tokenize encode`, with a val split).")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", "-t", help="Tokenizer directory the tokens were made with.")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Sweep directory: points/, logs/, table/, _sweep.json.")
    ],
    budgets: Annotated[
        Optional[str],
        typer.Option(help="Compute budgets C in training FLOPs, comma-separated (default 1e11,3e11,1e12)."),
    ] = None,
    sizes: Annotated[
        Optional[str],
        typer.Option(
            help="Shapes as LAYERSxWIDTH, comma-separated (e.g. 1x32,2x64), each at every budget (default: the ladder)."
        ),
    ] = None,
    points: Annotated[
        Optional[int], typer.Option(help="Shapes per budget, picked from the ladder (default 5).")
    ] = None,
    tokens_per_param: Annotated[
        Optional[float],
        typer.Option(help="Where the grid is centred: D/N of the expected optimum (default 20, Chinchilla's)."),
    ] = None,
    lo: Annotated[
        Optional[float], typer.Option(help="Smallest N as a multiple of the expected optimum (default 0.3).")
    ] = None,
    hi: Annotated[
        Optional[float], typer.Option(help="Largest N as a multiple of the expected optimum (default 3).")
    ] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Tokens per training window (default 128).")] = None,
    batch_tokens: Annotated[
        Optional[int],
        typer.Option(
            help="Tokens per optimizer step; halved for points with fewer than min_steps steps (default 512)."
        ),
    ] = None,
    lr: Annotated[
        Optional[float],
        typer.Option(help="Peak learning rate of every point (default 1e-2, for models of 10k-300k parameters)."),
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of every point's init and data order.")] = None,
    tie_embeddings: Annotated[
        Optional[bool],
        typer.Option(
            "--tie-embeddings/--untie-embeddings",
            help="Tie the input embedding to the lm head, as pretrain does unless told, or give every point its own, as the sweep does unless told: tied, models of CPU-sweep widths learn slowly and by seed (docs/sweep.md). N and F are the same either way (the input embedding is a lookup).",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            "-w",
            min=1,
            rich_help_panel="Execution",
            help="Points trained at once (processes, or Ray tasks with --executor ray).",
        ),
    ] = 1,
    threads: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            rich_help_panel="Execution",
            help="Torch threads per point (default: torch's choice; cores / workers with --workers). Tiny models on a busy machine: 1.",
        ),
    ] = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    print_config_: PrintConfigOpt = False,
) -> None:
    """Train an IsoFLOP grid: for each budget C, shapes from 0.3x to 3x the expected optimum N, each for C / F tokens.

    F is the shape's training FLOPs per token as the MFU figure counts them (attention included).
    Each point is an ordinary `llmctl pretrain` run in SWEEP/points/NAME; re-running the same
    command skips finished points and resumes a killed one from its checkpoint. The final
    validation losses go to SWEEP/table (a Parquet dataset), which `llmctl sweep fit` reads.
    A re-run may add budgets or sizes; one that would train points differently is refused.

    The defaults are sized for 2 CPU cores: on TinyStories they take about 4 minutes with --workers 2
    --threads 1, and `sweep check` lands within 4% (docs/sweep.md); with --sizes
    1x16,1x24,1x32,1x48,1x64,1x96, within 3% (benchmarks/sweep.py). Models of these widths train untied
    by default: pretrain the predicted shape with --set model.tie_embeddings=false to match.
    """
    from llmctl import config as C  # yaml: kept out of --help
    from llmctl.executor import using  # multiprocessing: likewise
    from llmctl.sweep.run import SweepConfig, sweep  # pyarrow, sentencepiece: likewise

    flags = {
        "budgets": _floats(budgets, "--budgets"),
        "sizes": sizes.split(",") if sizes else None,
        "points": points,
        "tokens_per_param": tokens_per_param,
        "lo": lo,
        "hi": hi,
        "seq_len": seq_len,
        "batch_tokens": batch_tokens,
        "lr": lr,
        "seed": seed,
        "tie_embeddings": tie_embeddings,
        "threads": threads,
    }
    cfg = C.load(SweepConfig, config, set_, flags)
    if print_config_:
        return print_config(cfg)
    with using(executor or "local", ray_address or "auto", workers):
        res = sweep(
            tokens,
            tokenizer,
            output,
            cfg,
            workers=workers if executor != "ray" else max(workers, 2),
            echo=lambda m: out.print(m, markup=False, highlight=False),
        )
    out.print(
        f"wrote {res['table']} ({len(res['points'])} points); next: llmctl sweep fit {output}",
        markup=False,
        highlight=False,
    )


@sweep_app.command("fit")
def fit_cmd(
    sweep_dir: Annotated[str, typer.Argument(metavar="SWEEP", help="Sweep directory (from `llmctl sweep`).")],
    predict: Annotated[
        Optional[float], typer.Option(help="Budget to predict, in FLOPs (default: 3x the largest budget).")
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Bootstrap resamples for the 95% intervals (approach 3 uses a quarter of them).")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
) -> None:
    """Fit Chinchilla's approach 2 (IsoFLOP parabolas, power laws N_opt ~ C^a, D_opt ~ C^b) and approach 3 (L = E + A/N^alpha + B/D^beta).

    Writes SWEEP/fit.json and SWEEP/plots/ (IsoFLOP curves, compute-optimal frontier, tokens per
    parameter) and predicts the best shape and its loss at a larger budget.
    """
    from llmctl.sweep.fit import fit_sweep, summary_lines  # numpy, scipy: kept out of --help

    fit = fit_sweep(sweep_dir, predict=predict, bootstrap=bootstrap, seed=seed)
    for line in summary_lines(fit):
        out.print(line, markup=False, highlight=False)
    out.print(f"wrote {sweep_dir}/fit.json and {sweep_dir}/plots/", markup=False, highlight=False)


@sweep_app.command("check")
def check_cmd(
    sweep_dir: Annotated[
        str, typer.Argument(metavar="SWEEP", help="Sweep directory with a fit (from `llmctl sweep fit`).")
    ],
) -> None:
    """Train the predicted-optimal shape at the predicted budget and print predicted against actual validation loss."""
    from llmctl.sweep.check import check_sweep  # pyarrow, sentencepiece: kept out of --help

    c = check_sweep(sweep_dir)
    p = c["point"]
    ci = f" (95% interval {c['predicted_ci'][0]:.4f}-{c['predicted_ci'][1]:.4f})" if c.get("predicted_ci") else ""
    out.print(
        f"C {c['budget']:.3g}, {p['n_layer']} layers x d_model {p['d_model']} (N {p['params']:,}, D {p['tokens']:,}): "
        f"predicted val loss {c['predicted']:.4f}{ci}, actual {c['actual']:.4f}: "
        f"error {100 * c['relative_error']:+.2f}%",
        markup=False,
        highlight=False,
    )
