"""Length-controlled win rate, AlpacaEval 2's method ("length_controlled_minimal" formula).

A logistic model of the judge's preference for the model over the baseline,
`P(model wins) = sigmoid(w_len * tanh(std_delta_len) + w_0)`, with `std_delta_len` the baseline's
minus the model's answer length in characters divided by the standard deviation of that
difference, is fitted with the preference as a soft label (each pair twice, weighted p and 1 - p),
L1 penalty chosen by 5-fold grouped cross-validation (liblinear, seed 123), exactly as
`alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate`. The length-controlled win rate is
the mean predicted preference at zero length difference, x 100.

Preferences follow AlpacaEval: 1 = the baseline wins, 2 = the model wins, 1.5 = a tie (any
value in [1, 2] is allowed).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmctl.errors import UsageError


def _logloss_continuous(y_true: Any, y_pred: Any, true_prob: Any, true_sample_weight: Any = None) -> float:
    y = np.where(y_true == 1, true_prob, 1 - true_prob)
    p = np.clip(y_pred, 1e-15, 1 - 1e-15)
    ll = y * np.log(p) + (1 - y) * np.log(1 - p)
    if true_sample_weight is not None:
        ll = ll * true_sample_weight
    return float(-np.mean(ll))


def lc_winrate(preference: Sequence[float], len_model: Sequence[int], len_baseline: Sequence[int]) -> dict[str, float]:
    """win_rate, standard_error (AlpacaEval's, in %), length_controlled_winrate, lc_standard_error
    (in %) and the fitted weights, for per-pair preferences and answer lengths (characters)."""
    try:
        import sklearn  # scikit-learn: only for the length-controlled fit
        from sklearn.linear_model import LogisticRegressionCV  # likewise
        from sklearn.metrics import make_scorer  # likewise
        from sklearn.model_selection import GroupKFold  # likewise
    except ImportError:
        raise UsageError("the length-controlled win rate needs scikit-learn: pip install scikit-learn") from None
    pref = np.asarray(preference, dtype=float)
    n = len(pref)
    if n < 5:
        raise UsageError(f"the length-controlled win rate needs at least 5 judged pairs, got {n}")
    p = np.where(pref == 0.0, 1.5, pref) - 1.0
    wins = p  # AlpacaEval's AbsoluteScoringRule: the preference itself, a tie counting one half
    win_rate = float(wins.mean() * 100)
    se = float(wins.std(ddof=1) / np.sqrt(n) * 100)
    delta = np.asarray(len_baseline, dtype=float) - np.asarray(len_model, dtype=float)
    sd = delta.std(ddof=1)
    std_delta = delta / sd if sd > 0 else np.zeros(n)  # equal lengths everywhere: nothing to control for
    X = np.column_stack([np.tanh(std_delta), np.ones(n)])
    # each pair twice: label 1 weighted p, label 0 weighted 1 - p; folds keep a pair's two rows together
    Xd = np.concatenate([X, X])
    yd = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    prob = np.concatenate([p, 1 - p])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    prev = sklearn.get_config()["enable_metadata_routing"]
    sklearn.set_config(enable_metadata_routing=True)
    try:
        scorer = make_scorer(
            _logloss_continuous, response_method="predict_proba", greater_is_better=False
        ).set_score_request(true_sample_weight=True, true_prob=True)
        model = LogisticRegressionCV(
            cv=GroupKFold(n_splits=5),
            scoring=scorer,
            random_state=123,
            dual=False,
            penalty="l1",
            solver="liblinear",
            n_jobs=None,
            fit_intercept=False,
        )
        model.set_fit_request(sample_weight=True)
        with warnings.catch_warnings():  # scikit-learn >= 1.8 deprecates `penalty`; alpaca_eval's call uses it
            warnings.simplefilter("ignore", FutureWarning)
            model.fit(Xd, yd, sample_weight=prob, groups=groups, true_sample_weight=None, true_prob=prob)
        at_zero = np.column_stack([np.zeros(n), np.ones(n)])
        pred = model.predict_proba(at_zero)[:, 1]
    finally:
        sklearn.set_config(enable_metadata_routing=prev)
    return {
        "win_rate": win_rate,
        "standard_error": se,
        "length_controlled_winrate": float(pred.mean() * 100),
        "lc_standard_error": float(pred.std(ddof=1) / np.sqrt(n) * 100),
        "weight_length": float(model.coef_[0][0]),
        "weight_intercept": float(model.coef_[0][1]),
    }
