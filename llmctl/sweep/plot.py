"""The sweep's charts (matplotlib, Agg): IsoFLOP curves with their parabolas, the compute-optimal
frontier (N_opt and D_opt against C, with the power laws and the predicted budget), and tokens
per parameter at the optimum beside Chinchilla's 20."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from llmctl.sweep.isoflop import by_budget, d_opt_at, n_opt_at
from llmctl.utils.plot import pyplot, save


def _finish(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str | None = None, logy: bool = False) -> Any:
    """Log x (and optionally y), labels, legend, grid: the style the three charts share."""
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def isoflop_figure(rows: list[dict[str, Any]], fit: dict[str, Any]) -> Any:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(fit["approach2"]["budgets"])))
    for (c, g), b, col in zip(by_budget(rows).items(), fit["approach2"]["budgets"], colors):
        n = np.array([r["params"] for r in g], float)
        ax.scatter(n, [r["val_loss"] for r in g], color=col, zorder=3, label=f"C = {c:.2g}")
        x = np.linspace(np.log10(n.min()) - 0.15, np.log10(n.max()) + 0.15, 100)
        ax.plot(10**x, np.polyval(b["coef"], x), color=col, alpha=0.7)
        ax.plot([b["n_opt"]], [b["l_opt"]], marker="*", color=col, markersize=12, markeredgecolor="k")
    return _finish(
        fig,
        ax,
        "parameters N (matmul parameters)",
        "final validation loss (nats/token)",
        "IsoFLOP curves (points: runs; lines: parabolas in log N; stars: minima)",
    )


def frontier_figure(fit: dict[str, Any]) -> Any:
    plt = pyplot()
    a2, p = fit["approach2"], fit["prediction"]
    cs = np.array([b["budget"] for b in a2["budgets"]])
    grid = np.logspace(np.log10(cs.min()) - 0.2, np.log10(max(cs.max(), p["budget"])) + 0.2, 50)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.scatter(cs, [b["n_opt"] for b in a2["budgets"]], color="#4c72b0", label="N_opt per budget")
    ax.plot(grid, n_opt_at(a2, grid), color="#4c72b0", label=f"N_opt ~ C^{a2['a']:.2f}")
    ax.scatter(cs, [b["d_opt"] for b in a2["budgets"]], color="#dd8452", label="D_opt per budget")
    ax.plot(grid, d_opt_at(a2, grid), color="#dd8452", label=f"D_opt ~ C^{a2['b']:.2f}")
    ax.scatter(
        [p["budget"]],
        [p["point"]["params"]],
        marker="*",
        s=160,
        color="#4c72b0",
        edgecolor="k",
        label="predicted shape (N)",
    )
    ax.scatter(
        [p["budget"]], [p["point"]["tokens"]], marker="*", s=160, color="#dd8452", edgecolor="k", label="its tokens (D)"
    )
    return _finish(
        fig, ax, "compute C (training FLOPs)", "parameters / tokens", "compute-optimal frontier (approach 2)", logy=True
    )


def tokens_per_param_figure(fit: dict[str, Any]) -> Any:
    plt = pyplot()
    a2 = fit["approach2"]
    cs = [b["budget"] for b in a2["budgets"]]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.plot(cs, [b["d_opt"] / b["n_opt"] for b in a2["budgets"]], marker="o", label="this sweep (D_opt / N_opt)")
    ax.axhline(fit["chinchilla"]["tokens_per_param"], color="#999999", linestyle="--", label="Chinchilla (~20)")
    return _finish(fig, ax, "compute C (training FLOPs)", "tokens per parameter", logy=True)


def plot_fit(rows: list[dict[str, Any]], fit: dict[str, Any], out: Path) -> dict[str, str]:
    """Write the three charts into OUT; returns {name: file name}."""
    files = {"isoflop": "isoflop.png", "frontier": "frontier.png", "tokens_per_param": "tokens_per_param.png"}
    save(isoflop_figure(rows, fit), out / files["isoflop"])
    save(frontier_figure(fit), out / files["frontier"])
    save(tokens_per_param_figure(fit), out / files["tokens_per_param"])
    return files
