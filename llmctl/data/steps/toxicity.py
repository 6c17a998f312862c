"""Toxicity / offensive-language score: the model that `alt-profanity-check` ships.

Model: a scikit-learn TF-IDF vectorizer (English stop words removed, min_df 1e-4) and a
calibrated linear SVM (`CalibratedClassifierCV(LinearSVC(class_weight="balanced"))`), both in
the wheel (`profanity_check/data/*.joblib`, 0.9 MB; MIT licence). It was trained by the original
`profanity-check` (Victor Zhou, 2019) on about 200k short texts: the Davidson et al. (2017)
hate-speech/offensive tweets and the Wikipedia talk-page comments of the Kaggle/Jigsaw Toxic
Comment Classification challenge (a text is positive when labelled offensive, hateful, toxic,
obscene, insult, threat...). So it scores offensive and profane language, in English, in short
texts; it does not know sexual content written politely, nor other languages. alt-profanity-check
re-trains it for each scikit-learn release and pins that release (scikit-learn==1.9.1 here).

Trust: the two .joblib files are pickles, which run code when loaded. They are loaded only from
the installed package (never from a path a config gives), so trusting them is trusting that
package's release on PyPI, as for any installed code. The `llmctl quality train --label toxic`
route (fastText, not a pickle) trains one on your own labelled data instead.

The `toxicity` step of `llmctl filter` (off by default: `--toxicity`) sets `toxicity_score`, the
model's probability of offensive language for the whole text (TF-IDF is length-normalized, so a
long page with one swear word scores low; C4's bad-words rule, on by default, catches those), and
removes documents at or above `threshold`, reason `toxicity`. Its precision and recall on a
labelled sample of real text, and its speed, are in docs/filter.md.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from llmctl.data.document import DETAIL_KEY, Document
from llmctl.errors import UsageError


@dataclass
class ToxicityConfig:
    enabled: bool = False  # needs alt-profanity-check (pip install 'llmctl[toxicity]')
    threshold: float = 0.8  # remove documents with toxicity_score >= this
    max_chars: int = 100_000  # characters of the text scored


_CACHE: dict[str, object] = {}


def _model():
    if "model" not in _CACHE:
        try:
            from profanity_check import profanity_check as pc  # an optional extra (sklearn), loaded when the step is on
        except ImportError:
            raise UsageError(
                "the toxicity step needs alt-profanity-check: pip install 'llmctl[toxicity]' "
                "(or pip install alt-profanity-check)"
            ) from None
        _CACHE["model"] = (pc.vectorizer, pc.model, _SigmoidEnsemble.of(pc.model))
    return _CACHE["model"]


class _SigmoidEnsemble:
    """`CalibratedClassifierCV(LinearSVC, method="sigmoid").predict_proba(X)[:, 1]` for a binary model,
    as one sparse product: mean over its k folds of expit(-(a_k (w_k . x + b_k) + c_k));
    tests/data/steps/test_langid_toxicity.py checks both agree to 1e-9 on real text."""

    def __init__(self, w: np.ndarray, b: np.ndarray, a: np.ndarray, c: np.ndarray):
        self.w, self.b, self.a, self.c = w, b, a, c

    @classmethod
    def of(cls, model) -> _SigmoidEnsemble | None:
        """The ensemble of `model`, or None when it is not a binary sigmoid-calibrated linear model."""
        folds = getattr(model, "calibrated_classifiers_", None)
        if getattr(model, "method", None) != "sigmoid" or list(getattr(model, "classes_", [])) != [0, 1] or not folds:
            return None
        try:
            w = np.stack([f.estimator.coef_.ravel() for f in folds], axis=1)
            b = np.array([float(f.estimator.intercept_[0]) for f in folds])
            a = np.array([float(f.calibrators[0].a_) for f in folds])
            c = np.array([float(f.calibrators[0].b_) for f in folds])
        except (AttributeError, IndexError):
            return None
        return cls(w, b, a, c)

    def __call__(self, x) -> np.ndarray:
        f = np.asarray(x @ self.w) + self.b
        return (1.0 / (1.0 + np.exp(self.a * f + self.c))).mean(axis=1)


def toxicity_scores(texts: list[str], max_chars: int = 100_000, exact_sklearn: bool = False) -> np.ndarray:
    """Probability of offensive language of each text (alt-profanity-check's model)."""
    if not texts:
        return np.zeros(0, np.float32)
    vectorizer, model, fast = _model()
    x = vectorizer.transform([t[:max_chars] for t in texts])
    if fast is not None and not exact_sklearn:
        return fast(x).astype(np.float32)
    return model.predict_proba(x)[:, list(model.classes_).index(1)].astype(np.float32)


class ToxicityFilter:
    """The `toxicity` step: fills toxicity_score, removes documents at or above the threshold."""

    name = "toxicity"

    def __init__(self, cfg: ToxicityConfig):
        if not 0.0 <= cfg.threshold <= 1.0:
            raise UsageError(f"--toxicity-threshold must be between 0 and 1, got {cfg.threshold}")
        self.cfg = cfg
        _model()

    def __call__(self, doc: Document, stats: Counter[str]) -> str | None:
        score = float(toxicity_scores([doc.text], self.cfg.max_chars)[0])
        doc.meta["toxicity_score"] = score
        stats["toxicity.scored"] += 1
        if score >= self.cfg.threshold:
            doc.meta[DETAIL_KEY] = f"{score:.3f}"
            return "toxicity"
        return None
