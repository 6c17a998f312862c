"""Chinchilla's approach 3 (Hoffmann et al. 2022, sec. 3.3): a parametric loss L(N, D).

    L(N, D) = E + A / N^alpha + B / D^beta

fitted as the paper does: minimise the Huber loss (delta 1e-3) between the log of the predicted
loss, LSE(a - alpha log N, b - beta log D, e) with A = e^a, B = e^b, E = e^e, and the log of the
observed loss, with L-BFGS from a grid of initialisations. The paper's grid (alpha, beta in
0..2 by 0.5, e in -1..1 by 0.5, a, b in 0..25 by 5: 4,500 starts) is scored in one vectorised pass
and L-BFGS (scipy, analytic gradient) runs from its best `starts`; the lowest optimum wins.

Compute-optimal allocation under the law, for C = 6 N D: N_opt = G (C / 6)^a, D_opt = (C / 6)^b / G
with a = beta / (alpha + beta), b = alpha / (alpha + beta), G = (alpha A / (beta B))^(1 / (alpha + beta)).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from llmctl.sweep.isoflop import percentile_ci

DELTA = 1e-3
GRID = np.array(
    list(
        itertools.product(
            np.arange(0, 30, 5.0),
            np.arange(0, 30, 5.0),
            np.arange(-1, 1.5, 0.5),
            np.arange(0, 2.5, 0.5),
            np.arange(0, 2.5, 0.5),
        )
    )
)
# columns: a, b, e, alpha, beta


def _terms(theta: np.ndarray, logn: np.ndarray, logd: np.ndarray) -> np.ndarray:
    """(..., points, 3): a - alpha log N, b - beta log D, e, for one theta (5,) or a stack (k, 5)."""
    a, b, e, al, be = (theta[..., i, None] for i in range(5))
    return np.stack([a - al * logn, b - be * logd, np.broadcast_to(e, np.broadcast_shapes(e.shape, logn.shape))], -1)


def _lse(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log-sum-exp over the last axis and the softmax weights (plain numpy: scipy's are ~100x slower here)."""
    m = t.max(-1, keepdims=True)
    ex = np.exp(t - m)
    s = ex.sum(-1, keepdims=True)
    return (np.log(s) + m)[..., 0], ex / s


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))


def objective(
    theta: np.ndarray, logn: np.ndarray, logd: np.ndarray, logl: np.ndarray, delta: float = DELTA
) -> tuple[float, np.ndarray]:
    """Summed Huber loss of the log-loss residuals, and its gradient in (a, b, e, alpha, beta)."""
    t = _terms(theta, logn, logd)
    lse, weights = _lse(t)
    r = lse - logl
    h = np.clip(r, -delta, delta)  # d huber / d r
    w = weights * h[:, None]
    grad = np.array([w[:, 0].sum(), w[:, 1].sum(), w[:, 2].sum(), -(w[:, 0] * logn).sum(), -(w[:, 1] * logd).sum()])
    return float(_huber(r, delta).sum()), grad


def params_of(theta: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = (float(v) for v in theta)
    with np.errstate(over="ignore"):  # a wild bootstrap fit: inf, reported as such
        return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": alpha, "beta": beta}


def fit_law(
    params: Any,
    tokens: Any,
    losses: Any,
    starts: int = 16,
    extra_starts: list[np.ndarray] | None = None,
    delta: float = DELTA,
) -> dict[str, Any]:
    """The best L(N, D) over the grid's best `starts` initialisations (plus `extra_starts`)."""
    logn, logd = np.log(np.asarray(params, float)), np.log(np.asarray(tokens, float))
    logl = np.log(np.asarray(losses, float))
    scores = _huber(_lse(_terms(GRID, logn, logd))[0] - logl, delta).sum(-1)
    inits = [GRID[i] for i in np.argsort(scores, kind="stable")[:starts]] + list(extra_starts or [])
    best = None
    bounds = [(None, None), (None, None), (None, None), (0.0, None), (0.0, None)]
    with threadpool_limits(1):  # 5 parameters: BLAS threads only spin (50x slower on a busy machine)
        for x0 in inits:
            res = minimize(
                objective,
                x0,
                args=(logn, logd, logl, delta),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12},
            )
            if best is None or res.fun < best.fun:
                best = res
    return {**params_of(best.x), "objective": float(best.fun), "theta": best.x.tolist()}


def law_loss(p: dict[str, float], params: float, tokens: float) -> float:
    """E + A / N^alpha + B / D^beta, each term taken in log space from the fit's own log A and log B
    (`theta`), so a fit whose A or B overflows a float still predicts a finite loss."""
    log_a = p["theta"][0] if "theta" in p else np.log(p["A"])
    log_b = p["theta"][1] if "theta" in p else np.log(p["B"])
    with np.errstate(over="ignore", invalid="ignore"):
        return float(p["E"] + np.exp(log_a - p["alpha"] * np.log(params)) + np.exp(log_b - p["beta"] * np.log(tokens)))


def law_allocation(p: dict[str, float]) -> dict[str, float]:
    """The law's own compute-optimal exponents (for C = 6 N D)."""
    s = p["alpha"] + p["beta"]
    return {"a": p["beta"] / s if s else float("nan"), "b": p["alpha"] / s if s else float("nan")}


def bootstrap_law(
    rows: list[dict[str, Any]], full: dict[str, Any], n: int, seed: int, at: tuple[float, float] | None = None
) -> dict[str, Any]:
    """Per-parameter 95% percentile intervals (and of the loss at (N, D) `at`): all points resampled."""
    rng = np.random.default_rng(seed)
    got: dict[str, list[float]] = {k: [] for k in ("E", "A", "B", "alpha", "beta", "loss")}
    start = [np.array(full["theta"])]
    for _ in range(n):
        s = [rows[i] for i in rng.integers(0, len(rows), len(rows))]
        f = fit_law(
            [r["params"] for r in s], [r["tokens"] for r in s], [r["val_loss"] for r in s], starts=2, extra_starts=start
        )
        for k in ("E", "A", "B", "alpha", "beta"):
            got[k].append(f[k])
        if at is not None:
            got["loss"].append(law_loss(f, *at))
    return {k: percentile_ci(v) for k, v in got.items()} | {"resamples": n}
