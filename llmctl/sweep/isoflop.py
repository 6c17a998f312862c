"""Chinchilla's approach 2 (Hoffmann et al. 2022, sec. 3.2): IsoFLOP profiles.

For each budget C the final losses of its points are fitted with a parabola in log10 N; its
minimum is N_opt(C), and D_opt(C) is read off the budget's points (log D is linear in log N
along an IsoFLOP curve, up to the attention term, so it is interpolated there). Power laws
N_opt = k_a C^a and D_opt = k_b C^b are least-squares lines in log-log; so is the loss at the
minimum, L_opt = k_l C^-g, a second, cruder way to predict a larger budget's loss.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llmctl.errors import UsageError

MIN_POINTS = 3


def by_budget(rows: list[dict[str, Any]]) -> dict[float, list[dict[str, Any]]]:
    out: dict[float, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(float(r["budget"]), []).append(r)
    return dict(sorted(out.items()))


def check_points(groups: dict[float, list[dict[str, Any]]]) -> None:
    """One line naming the budgets with fewer than 3 distinct sizes, or too few budgets."""
    few = [
        f"{c:.3g} ({len({r['params'] for r in g})})"
        for c, g in groups.items()
        if len({r["params"] for r in g}) < MIN_POINTS
    ]
    if few:
        raise UsageError(
            f"a fit needs at least {MIN_POINTS} model sizes per budget; budget(s) {', '.join(few)} "
            "have fewer: add points (--points, --sizes) or drop those budgets"
        )
    if len(groups) < 2:
        raise UsageError(f"a fit needs at least 2 budgets (the sweep has {len(groups)}): add --budgets")


def fit_budget(params: np.ndarray, tokens: np.ndarray, losses: np.ndarray) -> dict[str, Any] | None:
    """The parabola L = c2 x^2 + c1 x + c0 in x = log10 N and its minimum; None when it has none."""
    x, logd = np.log10(params), np.log10(tokens)
    if len(set(x.tolist())) < MIN_POINTS:
        return None
    c2, c1, c0 = np.polyfit(x, losses, 2)
    if not c2 > 0:
        return None
    xm = -c1 / (2 * c2)
    s, k = np.polyfit(x, logd, 1)
    return {
        "coef": [float(c2), float(c1), float(c0)],
        "n_opt": float(10**xm),
        "d_opt": float(10 ** (s * xm + k)),
        "l_opt": float(c0 - c1 * c1 / (4 * c2)),
        "bracketed": bool(x.min() <= xm <= x.max()),
    }


def power_law(c: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(exponent, coefficient) of y = k c^e, least squares in log10."""
    with np.errstate(invalid="ignore", divide="ignore"):  # a bootstrap resample's minimum can be 0 or negative: nan
        e, k = np.polyfit(np.log10(c), np.log10(y), 1)
    return float(e), float(10**k)


def fit_isoflop(rows: list[dict[str, Any]], check: bool = True) -> dict[str, Any] | None:
    """Approach 2 on table rows (params, tokens, val_loss, budget); None if a resample has no minimum."""
    groups = by_budget(rows)
    if check:
        check_points(groups)
    per = []
    for c, g in groups.items():
        f = fit_budget(
            np.array([r["params"] for r in g], float),
            np.array([r["tokens"] for r in g], float),
            np.array([r["val_loss"] for r in g], float),
        )
        if f is None:
            if check:
                best = min(g, key=lambda r: r["val_loss"])["params"]
                where = (
                    "its largest size has the lowest loss: add larger sizes"
                    if best == max(r["params"] for r in g)
                    else "its smallest size has the lowest loss: add smaller sizes"
                    if best == min(r["params"] for r in g)
                    else "the losses are too noisy for a curve: add sizes or raise the budgets"
                )
                raise UsageError(
                    f"budget {c:.3g}: the losses of its sizes have no minimum in log N (a parabola opening "
                    f"downwards or flat); {where} (--sizes, or --lo/--hi with the ladder)"
                )
            return None
        per.append({"budget": c, **f})
    if len(per) < 2:
        return None
    cs = np.array([p["budget"] for p in per])
    a, ka = power_law(cs, np.array([p["n_opt"] for p in per]))
    b, kb = power_law(cs, np.array([p["d_opt"] for p in per]))
    g, kl = power_law(cs, np.array([p["l_opt"] for p in per]))
    return {"budgets": per, "a": a, "k_a": ka, "b": b, "k_b": kb, "loss_exponent": g, "k_loss": kl}


def _at(k: float, budget: float, exponent: float) -> float:
    """k x budget^exponent; inf (not an OverflowError) for a wild bootstrap resample's exponent."""
    try:
        return k * budget**exponent
    except OverflowError:
        return math.inf


def n_opt_at(fit: dict[str, Any], budget: float) -> float:
    return _at(fit["k_a"], budget, fit["a"])


def d_opt_at(fit: dict[str, Any], budget: float) -> float:
    return _at(fit["k_b"], budget, fit["b"])


def l_opt_at(fit: dict[str, Any], budget: float) -> float:
    return _at(fit["k_loss"], budget, fit["loss_exponent"])


def percentile_ci(values: list[float], level: float = 0.95) -> list[float] | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if len(vals) < 2:
        return None
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def bootstrap_isoflop(rows: list[dict[str, Any]], n: int, seed: int, predict_at: float) -> dict[str, Any]:
    """95% percentile intervals of a, b and N_opt at `predict_at`: points resampled within each budget."""
    rng = np.random.default_rng(seed)
    groups = by_budget(rows)
    got: dict[str, list[float]] = {"a": [], "b": [], "n_opt": []}
    for _ in range(n):
        sample = [g[i] for g in groups.values() for i in rng.integers(0, len(g), len(g))]
        f = fit_isoflop(sample, check=False)
        if f is None:
            continue
        got["a"].append(f["a"])
        got["b"].append(f["b"])
        got["n_opt"].append(n_opt_at(f, predict_at))
    return {k: percentile_ci(v) for k, v in got.items()} | {"resamples_used": len(got["a"]), "resamples": n}
