"""The sweep's fits on losses sampled from known laws: approach 3 recovers the law's parameters, approach 2
its compute-optimal exponents; too few points per budget, or no minimum, is a one-line error."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from sweep_helpers import CHINCHILLA, isoflop_rows, law, sweep_dir

from llmctl.errors import UsageError
from llmctl.sweep.isoflop import bootstrap_isoflop, fit_isoflop
from llmctl.sweep.law import fit_law, law_allocation, law_loss, params_of

BUDGETS = [1e18, 1e19, 1e20, 1e21, 1e22]


def test_approach3_recovers_chinchilla_law_from_noisy_samples():
    rng = np.random.default_rng(0)
    n = 10 ** rng.uniform(7, 10.5, 150)  # 10M..30B parameters
    d = 10 ** rng.uniform(9, 12, 150)  # 1B..1T tokens
    loss = law(CHINCHILLA, n, d) * np.exp(rng.normal(0, 0.002, 150))
    fit = fit_law(n, d, loss)
    for k, true in CHINCHILLA.items():
        assert fit[k] == pytest.approx(true, rel=0.05), (k, fit[k], true)
    # and a law with other exponents is not pulled towards Chinchilla's
    other = {"E": 2.5, "A": 60.0, "B": 300.0, "alpha": 0.25, "beta": 0.3}
    fit = fit_law(n, d, law(other, n, d) * np.exp(rng.normal(0, 0.002, 150)))
    for k, true in other.items():
        assert fit[k] == pytest.approx(true, rel=0.05), (k, fit[k], true)


@pytest.mark.parametrize("p", [CHINCHILLA, {"E": 2.0, "A": 300.0, "B": 2000.0, "alpha": 0.5, "beta": 0.25}])
def test_approach2_recovers_the_laws_exponents(p):
    true = law_allocation(p)  # a = beta / (alpha + beta), b = alpha / (alpha + beta)
    fit = fit_isoflop(isoflop_rows(p, BUDGETS, seed=1))
    assert fit["a"] == pytest.approx(true["a"], rel=0.05)
    assert fit["b"] == pytest.approx(true["b"], rel=0.05)
    assert all(b["bracketed"] for b in fit["budgets"])
    ci = bootstrap_isoflop(isoflop_rows(p, BUDGETS, seed=1), 50, 0, 1e23)
    assert ci["a"][0] <= fit["a"] <= ci["a"][1] and ci["a"][1] - ci["a"][0] < 0.1


def test_a_wild_bootstrap_exponent_is_infinite_not_an_error():
    from llmctl.sweep.isoflop import d_opt_at, l_opt_at, n_opt_at

    wild = {"k_a": 1.0, "a": 400.0, "k_b": 1.0, "b": 1.0, "k_loss": 1.0, "loss_exponent": 0.5}
    assert n_opt_at(wild, 3e11) == float("inf")  # 3e11 ** 400 overflows a float (seen on a real CPU sweep)
    assert d_opt_at(wild, 3e11) == 3e11 and l_opt_at(wild, 4.0) == 2.0


def test_no_minimum_is_a_usage_error():
    rows = [
        {"budget": c, "params": n, "tokens": c / (6 * n), "val_loss": 3 - 0.1 * np.log10(n)}  # falls with N only
        for c in (1e18, 1e19)
        for n in (1e7, 1e8, 1e9)
    ]
    with pytest.raises(UsageError, match="no minimum in log N"):
        fit_isoflop(rows)


def test_fit_with_fewer_than_three_sizes_per_budget_is_a_one_line_error(tmp_path):
    rows = isoflop_rows(CHINCHILLA, [1e19, 1e20], sizes=5)
    big = sorted((r for r in rows if r["budget"] == 1e20), key=lambda r: r["params"])
    rows = [r for r in rows if r["budget"] == 1e19] + big[:2]
    assert sum(r["budget"] == 1e20 for r in rows) == 2
    root = sweep_dir(tmp_path / "sw", rows)
    r = subprocess.run([sys.executable, "-m", "llmctl", "sweep", "fit", str(root)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("llmctl: error: a fit needs at least 3 model sizes per budget; budget(s) 1e+20 (2)")
    assert not (root / "fit.json").exists()


def test_fit_of_a_sweep_dir_predicts_the_laws_loss(tmp_path):
    """Through fit_sweep: the prediction at 3x the largest budget is the law's loss for the chosen shape."""
    from llmctl.sweep.fit import fit_sweep

    p = {"E": 3.0, "A": 40.0, "B": 60.0, "alpha": 0.35, "beta": 0.3}  # a law at this ladder's scale
    rows = isoflop_rows(p, [1e10, 3e10, 1e11], sizes=5, span=0.5, noise=0.001)
    fit = fit_sweep(sweep_dir(tmp_path / "sw", rows), bootstrap=8, plots=False)
    pred = fit["prediction"]
    assert pred["budget"] == pytest.approx(3e11)
    pt = pred["point"]
    assert pt["flops"] == pytest.approx(3e11, rel=0.02)
    assert pred["loss"] == pytest.approx(float(law(p, pt["params"], pt["tokens"])), rel=0.01)
    assert fit["approach2"]["a"] == pytest.approx(law_allocation(p)["a"], rel=0.1)


def test_law_loss_is_finite_when_a_fit_overflows_a():
    """A degenerate fit (log A 1239, alpha 135: A is inf as a float) still predicts E + its terms."""
    theta = [1239.3132865205878, 6.180002683148592, 1.3617990200336687, 135.0802294699454, 1.0680868807346975]
    p = {**params_of(np.array(theta)), "theta": theta}
    assert p["A"] == float("inf")
    n, d = 19960.5, 6955.7
    expected = (
        math.exp(theta[2]) + math.exp(theta[0] - theta[3] * math.log(n)) + math.exp(theta[1] - theta[4] * math.log(d))
    )
    assert law_loss(p, n, d) == pytest.approx(expected, rel=1e-12)
