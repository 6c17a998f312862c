"""`llmctl plot`: train and validation loss curves of one or more runs, as a PNG (matplotlib, Agg).

Training loss is noisy at small batches, so it is drawn faint with an exponential moving
average (alpha 0.25, ~4-step memory) on top; validation points are drawn as markers.
"""

from __future__ import annotations

import json
from pathlib import Path

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


def plot_runs(runs: list[str | Path], output: str | Path | None = None, x: str = "step") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in ("step", "tokens"):
        raise UsageError(f"--x must be step or tokens, got {x!r}")
    out = Path(output) if output else Path(runs[0]) / "loss.png"
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run in enumerate(runs):
        tr, va = read_metrics(run)
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
    ax.set_xlabel("tokens" if x == "tokens" else "step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
