"""`llmctl plot` and the report's training charts (matplotlib, Agg).

Training loss is noisy at small batches, so it is drawn faint with an exponential moving
average (alpha 0.25, ~4-step memory) on top; validation points are drawn as markers. Each chart
says what its loss is: cross-entropy for pretraining and SFT, the Bradley-Terry loss for a reward
model, the DPO loss (of its `loss_type`) for DPO. Preference runs (reward, DPO) get a second
chart, `prefs_figure`: reward margins and pairwise accuracy on two axes, each with its label.
Axes count in integers where the quantity is one (steps, tokens, documents), with thousands
separators.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmctl.errors import UsageError


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(train records, validation records) from RUN/metrics.jsonl."""
    f = Path(run_dir) / "metrics.jsonl"
    if not f.is_file():
        raise UsageError(f"{run_dir}: no metrics.jsonl (not a training run directory)")
    recs = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
    return [r for r in recs if "loss" in r], [r for r in recs if "val_loss" in r]


def ema(values: list[float], alpha: float = 0.25) -> list[float]:
    out, m = [], None
    for v in values:
        m = v if m is None else alpha * v + (1 - alpha) * m
        out.append(m)
    return out


def run_kind(run_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """(stage, config) of a training run: from its manifest when finished, else from the
    checkpoint's (a run still going), else guessed from the metrics it logs."""
    run = Path(run_dir)
    for m in [run / "_manifest.json", *sorted((run / "checkpoints").glob("step_*/_manifest.json"), reverse=True)]:
        if m.is_file():
            try:
                man = json.loads(m.read_text())
            except ValueError:
                continue
            if man.get("stage"):
                return str(man["stage"]), man.get("config") or {}
    tr, _ = read_metrics(run)
    keys = set(tr[0]) if tr else set()
    return ("dpo" if "rewards/margins" in keys else "reward" if "margin" in keys else "pretrain"), {}


def loss_label(kind: str, config: dict[str, Any] | None = None) -> str:
    """The y-axis label of a run's loss chart: what that stage minimizes."""
    if kind == "reward":
        return "Bradley-Terry loss\n-log σ(r_chosen - r_rejected)"
    if kind == "dpo":
        loss_type = (config or {}).get("loss_type", "sigmoid")
        return f"DPO loss ({loss_type}), beta {(config or {}).get('beta', '?')}"
    if kind == "sft":
        return "cross-entropy on response tokens (nats/token)"
    return "cross-entropy (nats/token)"


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display). Text is drawn as given: a
    `$` in a run's path or name is not read as mathtext (which fails on `r$un`)."""
    import matplotlib  # heavy: imported on the first chart, never by --help

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt  # after use("Agg")

    return plt


def style_axes(ax: Any, x: str | None = "int", y: str | None = "num") -> None:
    """Tick style per axis: "int" (a count: integer ticks, no step 2.5; thousands separators),
    "num" (thousands separators from 1,000 on), None (left alone: a categorical axis)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator  # matplotlib: kept out of --help

    for axis, kind in ((ax.xaxis, x), (ax.yaxis, y)):
        if kind == "int":
            axis.set_major_locator(MaxNLocator(integer=True))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        elif kind == "num":
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"))


def loss_figure(runs: list[str | Path], x: str = "step") -> Any:
    """The loss chart of one or more runs (train EMA + validation markers), labelled by kind."""
    plt = pyplot()

    if x not in ("step", "tokens"):
        raise UsageError(f"--x must be step or tokens, got {x!r}")
    fig, ax = plt.subplots(figsize=(8, 5))
    kinds = []
    for i, run in enumerate(runs):
        tr, va = read_metrics(run)
        kinds.append(run_kind(run))
        color = f"C{i}"
        name = Path(run).name
        if tr:
            tokens_per_step = tr[0]["tokens"] / tr[0]["step"]
            xs = [r[x] for r in tr]
            ax.plot(xs, [r["loss"] for r in tr], color=color, alpha=0.25, lw=1)
            ax.plot(xs, ema([r["loss"] for r in tr]), color=color, lw=1.5, label=f"{name} train (EMA)")
            if va:
                vx = [r["step"] * (tokens_per_step if x == "tokens" else 1) for r in va]
                ax.plot(vx, [r["val_loss"] for r in va], "o--", color=color, ms=4, label=f"{name} val")
    labels = {loss_label(k, c) for k, c in kinds}
    ax.set_ylabel(labels.pop() if len(labels) == 1 else "loss (see each run's stage)")
    ax.set_xlabel("tokens" if x == "tokens" else "step")
    style_axes(ax)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def prefs_figure(run: str | Path) -> Any | None:
    """Reward margins and pairwise accuracy of a preference run (DPO: TRL's rewards/margins and
    rewards/accuracies; a reward model: margin and accuracy), train and held out, on two axes;
    None for a run that logs neither."""
    plt = pyplot()

    recs = [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    kind, cfg = run_kind(run)
    margin, acc = (
        ("rewards/margins", "rewards/accuracies")
        if any("rewards/margins" in r for r in recs)
        else ("margin", "accuracy")
    )
    train = [r for r in recs if margin in r]
    if not train:
        return None
    val = [r for r in recs if f"val_{margin}" in r]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 2))
    steps = [r["step"] for r in train]
    for ax, key, label in (
        (
            top,
            margin,
            "reward margin\n" + ("β·(log-ratio chosen - rejected)" if kind == "dpo" else "r_chosen - r_rejected"),
        ),
        (bottom, acc, "accuracy\n(chosen > rejected)"),
    ):
        vals = [r[key] for r in train if key in r]
        ax.plot(steps[: len(vals)], vals, color="C0", alpha=0.25, lw=1)
        ax.plot(steps[: len(vals)], ema(vals), color="C0", lw=1.5, label="train (EMA)")
        held = [r for r in val if f"val_{key}" in r]
        if held:
            ax.plot(
                [r["step"] for r in held], [r[f"val_{key}"] for r in held], "o--", color="C1", ms=4, label="held out"
            )
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        style_axes(ax)
    bottom.set_ylim(-0.02, 1.02)
    bottom.axhline(0.5, color="#999", lw=0.8, ls=":")
    top.axhline(0.0, color="#999", lw=0.8, ls=":")
    top.legend(loc="best")
    bottom.set_xlabel("step")
    top.set_title(
        "DPO implicit reward: margins and accuracy" if kind == "dpo" else "reward model: margins and accuracy"
    )
    fig.tight_layout()
    return fig


def save(fig: Any, out: str | Path, dpi: int = 120) -> Path:
    plt = pyplot()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def plot_runs(runs: list[str | Path], output: str | Path | None = None, x: str = "step") -> Path:
    """Write the loss chart of `runs` to OUTPUT (default RUN/loss.png); returns its path."""
    return save(loss_figure(runs, x), Path(output) if output else Path(runs[0]) / "loss.png")
