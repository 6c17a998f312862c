"""`llmctl sweep fit SWEEP`: both Chinchilla fits, bootstrap intervals, plots and a prediction.

Reads SWEEP/table, fits approach 2 (llmctl.sweep.isoflop) and approach 3 (llmctl.sweep.law),
and predicts a larger budget C* (default 3x the largest): the shape is the ladder's (or
--sizes') shape nearest to approach 2's N_opt(C*), trained for C* / F tokens as every grid point
is; its loss is approach 3's L(N, D) at that shape, with approach 2's L_opt(C*) beside it.
Writes SWEEP/fit.json and SWEEP/plots/{isoflop,frontier,tokens_per_param}.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmctl.config import from_dict
from llmctl.errors import UsageError
from llmctl.store.dataset import atomic_write_json
from llmctl.sweep.grid import nearest_shape, point_at
from llmctl.sweep.isoflop import bootstrap_isoflop, by_budget, check_points, d_opt_at, fit_isoflop, l_opt_at, n_opt_at
from llmctl.sweep.law import bootstrap_law, fit_law, law_allocation, law_loss
from llmctl.sweep.plot import plot_fit
from llmctl.sweep.run import PLAN, SweepConfig, read_table

FIT = "fit.json"
# Hoffmann et al. 2022: approach 2's exponents (Table 2) and approach 3's fitted law (eq. 10)
CHINCHILLA = {
    "approach2": {"a": 0.49, "b": 0.51},
    "approach3": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
    "tokens_per_param": 20.0,
}


def read_plan(root: str | Path) -> dict[str, Any]:
    path = Path(root) / PLAN
    if not path.is_file():
        raise UsageError(f"{root}: not a sweep directory (no {PLAN}); run `llmctl sweep TOKENS -o {root}` first")
    return json.loads(path.read_text())


def fit_sweep(
    root: str | Path, predict: float | None = None, bootstrap: int = 200, seed: int = 0, plots: bool = True
) -> dict[str, Any]:
    """Fit SWEEP/table; writes SWEEP/fit.json (and the plots); returns what it wrote."""
    root = Path(root)
    plan = read_plan(root)
    rows = read_table(root)
    check_points(by_budget(rows))
    cfg = from_dict(SweepConfig, plan["config"])
    top = max(r["budget"] for r in rows)
    target = float(predict) if predict else 3 * top
    if not target > 0:
        raise UsageError(f"--predict: a budget in FLOPs, got {predict}")

    iso = fit_isoflop(rows)
    law = fit_law([r["params"] for r in rows], [r["tokens"] for r in rows], [r["val_loss"] for r in rows])
    shape, n, fpt = nearest_shape(n_opt_at(iso, target), cfg, plan["vocab_size"])
    point = point_at(shape, n, fpt, target, cfg)
    at = (float(point.params), float(point.tokens))
    pred = {
        "budget": target,
        "point": point.to_dict(),
        "n_opt": n_opt_at(iso, target),
        "d_opt": d_opt_at(iso, target),
        "loss": law_loss(law, *at),
        "loss_approach2": l_opt_at(iso, target),
        "tie_embeddings": cfg.tie_embeddings,
    }
    ci2 = bootstrap_isoflop(rows, bootstrap, seed, target)
    ci3 = bootstrap_law(rows, law, max(1, bootstrap // 4), seed, at)
    pred["loss_ci"], pred["n_opt_ci"] = ci3.pop("loss"), ci2.pop("n_opt")
    fit = {
        "approach2": {**iso, "ci": ci2},
        "approach3": {**law, "ci": ci3, "allocation": law_allocation(law)},
        "prediction": pred,
        "chinchilla": CHINCHILLA,
        "points": len(rows),
        "budgets": sorted({r["budget"] for r in rows}),
    }
    root.joinpath("plots").mkdir(exist_ok=True)
    if plots:
        fit["plots"] = plot_fit(rows, fit, root / "plots")
    atomic_write_json(root / FIT, fit)
    return fit


def read_fit(root: str | Path) -> dict[str, Any]:
    path = Path(root) / FIT
    if not path.is_file():
        raise UsageError(f"{root}: no {FIT}; run `llmctl sweep fit {root}` first")
    return json.loads(path.read_text())


def summary_lines(fit: dict[str, Any]) -> list[str]:
    """What `sweep fit` prints: exponents beside Chinchilla's, the law, the prediction."""
    a2, a3, p, ch = fit["approach2"], fit["approach3"], fit["prediction"], fit["chinchilla"]

    def ci(v: list[float] | None) -> str:
        return f" [{v[0]:.3g}, {v[1]:.3g}]" if v else ""

    pt = p["point"]
    lines = [
        f"approach 2 (IsoFLOP parabolas, {len(a2['budgets'])} budgets): N_opt ~ C^{a2['a']:.3f}{ci(a2['ci']['a'])}, "
        f"D_opt ~ C^{a2['b']:.3f}{ci(a2['ci']['b'])}  (Chinchilla: a {ch['approach2']['a']}, b {ch['approach2']['b']})"
    ]
    for b in a2["budgets"]:
        note = "" if b["bracketed"] else "  (minimum outside the sizes tried: extrapolated)"
        lines.append(
            f"  C {b['budget']:.3g}: N_opt {b['n_opt']:,.0f}, D_opt {b['d_opt']:,.0f} "
            f"({b['d_opt'] / b['n_opt']:.1f} tokens/param), loss {b['l_opt']:.4f}{note}"
        )
    lines.append(
        f"approach 3 (L = E + A/N^alpha + B/D^beta, Huber on log loss): E {a3['E']:.3f}{ci(a3['ci']['E'])}, "
        f"A {a3['A']:.4g}{ci(a3['ci']['A'])}, B {a3['B']:.4g}{ci(a3['ci']['B'])}, alpha {a3['alpha']:.3f}"
        f"{ci(a3['ci']['alpha'])}, beta {a3['beta']:.3f}{ci(a3['ci']['beta'])}; implies a {a3['allocation']['a']:.3f}, "
        f"b {a3['allocation']['b']:.3f}  (Chinchilla: E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28)"
    )
    lines.append(
        f"prediction at C {p['budget']:.3g}: {pt['n_layer']} layers x d_model {pt['d_model']} "
        f"(N {pt['params']:,}, nearest to N_opt {p['n_opt']:,.0f}), {pt['tokens']:,} tokens in {pt['steps']} steps "
        f"of {pt['batch_tokens']:,}: val loss {p['loss']:.4f}{ci(p['loss_ci'])} (approach 3; approach 2's "
        f"L_opt {p['loss_approach2']:.4f}); check it with `llmctl sweep check`"
    )
    if p.get("tie_embeddings") is False:  # the sweep's default; pretrain's is tied
        lines.append(
            "  (its points have an untied input embedding: pretrain this shape with --set model.tie_embeddings=false "
            "to train it as the sweep did)"
        )
    return lines
