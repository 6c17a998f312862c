"""`llmctl.eval.lc_winrate` against alpaca_eval's own `get_length_controlled_winrate` on the same annotations."""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings

import numpy as np
import pandas as pd
import pytest

from llmctl.eval.lc_winrate import lc_winrate

# alpaca_eval imports pkg_resources (gone from recent setuptools) only for version helpers: a
# stand-in while it is imported, taken away again so that nothing else in the session sees it
_STAND_IN = "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None
if _STAND_IN:
    sys.modules["pkg_resources"] = types.ModuleType("pkg_resources")
try:
    import alpaca_eval.metrics.glm_winrate as glm_winrate  # a test dependency: .[test]
finally:
    if _STAND_IN:
        del sys.modules["pkg_resources"]


def _alpaca(pref, len_model, len_base, tmp_path):
    g = glm_winrate
    n = len(pref)
    stub = tmp_path / "df_gamed.csv"  # the network-only AlpacaEval table; the minimal formula never uses it
    pd.DataFrame(
        {
            "model": "x",
            "index": range(n),
            "instruction_difficulty": 0.0,
            "preference": 0.5,
            "std_delta_len": 0.0,
            "not_gamed_baseline": True,
        }
    ).to_csv(stub, index=False)
    g.hf_hub_download = lambda **kw: str(stub)
    df = pd.DataFrame(
        {
            "index": range(n),
            "preference": pref,
            "output_1": ["x" * int(v) for v in len_base],
            "output_2": ["x" * int(v) for v in len_model],
            "generator_1": "baseline",
            "generator_2": "model",
            "annotator": "judge",
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return g.get_length_controlled_winrate(
            df, glm_name="length_controlled_minimal", save_weights_dir=None, is_warn_extreme_changes=False
        )


def _toy(rng, n, skill, bias, len_base, len_model):
    d = (len_model - len_base) / np.std(len_model - len_base, ddof=1)
    p = 1 / (1 + np.exp(-(np.log(skill / (1 - skill)) + bias * np.tanh(d))))
    u = rng.random(n)
    return np.where(u < p, 2.0, 1.0)


@pytest.mark.parametrize("seed", range(5))
def test_equals_alpaca_eval(seed, tmp_path):
    rng = np.random.default_rng(seed)
    n = 60 + 30 * seed
    lb = rng.integers(20, 400, n)
    lm = np.maximum(lb + rng.integers(-150, 300, n), 1)
    pref = _toy(rng, n, 0.55, 1.0, lb, lm)
    pref[rng.random(n) < 0.15] = 1.5  # ties
    pref[rng.random(n) < 0.05] = 1.25  # a soft verdict
    ours = lc_winrate(pref, lm, lb)
    ref = _alpaca(pref, lm, lb, tmp_path)
    for k in ("win_rate", "standard_error", "length_controlled_winrate", "lc_standard_error"):
        assert abs(ours[k] - float(ref[k])) < 1e-6, (k, ours[k], ref[k])


def test_length_biased_judge_moves_raw_not_lc():
    """Same pairs and lengths; one judge adds a taste for length to the same underlying skill."""
    rng = np.random.default_rng(0)
    n = 600
    lb = rng.integers(50, 500, n)
    lm = lb + rng.integers(-200, 400, n)
    u = rng.random(n)

    def judge(bias):
        d = (lm - lb) / np.std(lm - lb, ddof=1)
        p = 1 / (1 + np.exp(-(np.log(0.6 / 0.4) + bias * np.tanh(d))))
        return np.where(u < p, 2.0, 1.0)

    fair, biased = lc_winrate(judge(0.0), lm, lb), lc_winrate(judge(2.0), lm, lb)
    raw_move = abs(biased["win_rate"] - fair["win_rate"])
    lc_move = abs(biased["length_controlled_winrate"] - fair["length_controlled_winrate"])
    assert raw_move > 10
    assert lc_move < raw_move / 3
    assert fair["weight_length"] > -0.5 and biased["weight_length"] < -1  # longer model answer: delta < 0
