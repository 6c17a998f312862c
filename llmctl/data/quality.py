"""GPT-3-style quality classifier: fastText, reference text (label `hq`) against raw crawl (`lq`);
and, with `--label`, a fastText classifier for any label (toxic, nsfw, code, ...).

Inputs of `quality train` (--positive / --negative, repeatable): llmctl datasets, JSONL(.gz) and
Parquet files (read by the filter's readers, text in `text_field`), and .txt files with one
document per line. With `label` L the labels are `__label__L` and `__label__not_L` (hq / lq by
default); the manifest records the positive label, and the `quality` step of the filter scores
it: `quality_score` = P(L). `quality.keep=below` keeps documents scoring under the threshold, for
a classifier of what to remove (reason `quality.high_score`; `quality.low_score` otherwise).

Training (`train_quality`, `llmctl quality train`): texts are read from llmctl datasets,
normalized with `llmctl.data.dedup.base.normalize_text` (lowercase, no punctuation, one line),
truncated to `max_chars`, and deduplicated on the normalized text (positives first) so that no
held-out document has a copy in the training split. Each side is split with a seeded permutation
(`holdout`, default 20%); fastText trains with one thread (more threads make it
nondeterministic) and a fixed seed, so the same inputs and config give the same model and the
same held-out figures. The model directory holds `model.bin` (fastText's own binary format, not
a pickle) and `_manifest.json` (config, input lineage, precision/recall/F1 on the held-out split).

Scoring (`QualityFilter`, the `quality` step of `llmctl filter`): `quality_score` = fastText's
probability of `hq` for the normalized text; the model is loaded once per worker process.
Keep rules: `threshold` keeps score >= threshold; `pareto` is GPT-3's: keep when
`numpy.random.Generator.pareto(alpha) > 1 - score`, the generator seeded with (seed, the
document id's 64-bit hash) so a document's draw does not depend on workers or order. numpy's
Pareto is the Lomax distribution, P(X > x) = (1 + x)^-alpha, so a document scored s is kept with
probability (2 - s)^-alpha: with alpha = 9, 0.2% at s = 0, 2.6% at 0.5, 42% at 0.9, 100% at 1.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from llmctl.config import to_dict
from llmctl.data.dedup.base import exact_hash, normalize_text
from llmctl.data.document import DETAIL_KEY, Document
from llmctl.data.extract import ExtractConfig, input_kind, read_input
from llmctl.errors import UsageError
from llmctl.store import fs
from llmctl.store.dataset import MANIFEST, Dataset, file_sha256, fingerprint_file
from llmctl.store.lock import exclusive_output
from llmctl.store.manifest import write_manifest

MODEL_FILE = "model.bin"
HQ, LQ = "__label__hq", "__label__lq"
SAMPLING = ("threshold", "pareto")
HEADS = ("classes", "ridge", "binary")
GRADE_LABEL = "__label__g"  # head=classes labels: __label__g0 ... __label__g5


@dataclass
class QualityConfig:
    model: str | None = None  # a `llmctl quality train` directory (or a fastText .bin); None = step off
    # sampling=threshold: keep when quality_score >= threshold (keep=above); None: 0.5 for a probability
    # model, the grade it was trained at (`quality train --threshold`) for a grade model
    threshold: float | None = None
    keep: str = "above"  # above: keep high scores (quality); below: keep scores < threshold (a toxic/nsfw model)
    sampling: str = "threshold"  # threshold | pareto (GPT-3: keep when Pareto(alpha) > 1 - score)
    alpha: float = 9.0
    seed: int = 0

    @property
    def enabled(self) -> bool:
        return self.model is not None


@dataclass
class QualityTrainConfig:
    holdout: float = 0.2  # fraction of each side held out for precision/recall/F1
    seed: int = 0
    epoch: int = 25
    lr: float = 0.5
    word_ngrams: int = 2
    dim: int = 32
    bucket: int = 100_000  # hashed n-gram buckets: model size = (vocabulary + bucket) x dim x 4 bytes
    min_count: int = 1
    max_chars: int = 20_000  # characters of normalized text per document
    threshold: float = 0.5  # score at which held-out documents count as predicted positive
    label: str = "hq"  # the positive label: hq (quality), or any (toxic, nsfw, code, ...)
    negative_label: str | None = None  # None: lq for hq, else not_<label>
    text_field: str = "text"  # the text column of JSONL / Parquet inputs
    target: str = "grade"  # graded inputs (`quality annotate`): the column of the grade
    grade_threshold: float = 3.0  # graded inputs: positive when target >= this, negative below
    # graded inputs: what the model predicts. classes: fastText on one label per grade, score = the
    # expected grade; ridge: a ridge regression of the grade on that model's sentence vectors;
    # binary: fastText on grade >= grade_threshold against below, score = its probability
    head: str = "classes"
    ridge_alpha: float = 1.0  # head=ridge: the L2 penalty

    @property
    def labels(self) -> tuple[str, str]:
        neg = self.negative_label or ("lq" if self.label == "hq" else f"not_{self.label}")
        return f"__label__{self.label}", f"__label__{neg}"


# ----------------------------------------------------------------------------- the model


def model_path(path: str | Path) -> Path:
    """The model file of a `llmctl quality train` directory or a .bin file; local or a URI."""
    p = fs.to_path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise UsageError(f"{path}: no fastText model (expected a `llmctl quality train` directory or a .bin file)")
    return p


def model_lineage(path: str | Path) -> dict[str, Any]:
    p = model_path(path)
    return {"path": fs.display(p), "stage": "quality", "fingerprint": file_sha256(p)}


_MODELS: dict[str, Any] = {}


def _local_copy(p: Any) -> str:
    """fastText loads local files only: a model on a URI is copied once per machine into a cache
    keyed by its content (what Ray workers on other nodes do with `--quality-model s3://...`)."""
    if fs.is_local(p):
        return str(Path(p).resolve())
    cache = Path(tempfile.gettempdir()) / "llmctl-models"
    cache.mkdir(parents=True, exist_ok=True)
    local = cache / f"{file_sha256(p)}.bin"
    if not local.is_file():
        tmp = cache / f".{local.name}.tmp-{os.getpid()}"
        with fs.open_binary(p) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, local)
    return str(local)


def load_model(path: str | Path):
    """The fastText model at `path`, loaded once per process; a one-line UsageError if it is not one."""
    key = fs.display(model_path(path))
    if key not in _MODELS:
        import fasttext  # fasttext: kept out of --help and of the filter's import

        try:
            model = fasttext.load_model(_local_copy(model_path(path)))
        except (ValueError, RuntimeError, MemoryError) as e:
            raise UsageError(
                f"{path}: not a fastText model ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None
        model.llmctl_label, model.llmctl_grade = model_head(path, model.get_labels())
        _MODELS[key] = model
    return _MODELS[key]


def model_head(path: str | Path, labels: list[str]) -> tuple[str, dict[str, Any] | None]:
    """(the label a probability model scores, the grade head of a grade model or None), from the
    model's manifest (`llmctl quality train --label`, `--head`); a bare .bin scores hq."""
    manifest = fs.to_path(path) / MANIFEST
    stats = json.loads(manifest.read_text()).get("stats", {}) if manifest.is_file() else {}
    grade = stats.get("grade_head")
    if grade is not None:
        if not any(lab.startswith(GRADE_LABEL) for lab in labels):
            raise UsageError(f"{path}: a grade model without grade labels (retrain it with `llmctl quality train`)")
        return "grade", grade
    label = stats.get("label", HQ)
    if label not in labels:
        raise UsageError(f"{path}: fastText model has no {label} label (train it with `llmctl quality train`)")
    return label, None


def _expected_grades(labels, probs) -> np.ndarray:
    return np.array(
        [sum(int(lab[len(GRADE_LABEL) :]) * float(q) for lab, q in zip(ls, ps)) for ls, ps in zip(labels, probs)],
        dtype=np.float32,
    )


def score_texts(
    model, texts: list[str], max_chars: int = 20_000, label: str | None = None, grade: dict[str, Any] | None = None
) -> np.ndarray:
    """Each text's score (normalized here, as at training): the predicted grade for a grade model
    (head classes: the expected grade under the grade labels' probabilities; ridge: the
    regression on the sentence vector), else the probability of the positive label (`hq` by default)."""
    grade = grade if grade is not None else getattr(model, "llmctl_grade", None)
    norm = [normalize_text(t)[:max_chars] for t in texts]
    if grade is not None and grade["head"] == "ridge":
        if not norm:
            return np.zeros(0, np.float32)
        vectors = np.stack([model.get_sentence_vector(t) for t in norm])
        return (vectors @ np.asarray(grade["weights"]) + grade["bias"]).astype(np.float32)
    if grade is not None:
        return _expected_grades(*model.predict(norm, k=-1))
    label = label or getattr(model, "llmctl_label", HQ)
    labels, probs = model.predict(norm, k=-1)
    return np.array(
        [float(p[list(lab).index(label)]) if label in lab else 0.0 for lab, p in zip(labels, probs)], dtype=np.float32
    )


class QualityFilter:
    """The `quality` step of `llmctl filter`: sets quality_score, drops by threshold or Pareto draw."""

    name = "quality"

    def __init__(self, cfg: QualityConfig):
        if cfg.sampling not in SAMPLING:
            raise UsageError(f"--quality-sampling must be one of {', '.join(SAMPLING)}, got {cfg.sampling!r}")
        if cfg.keep not in ("above", "below"):
            raise UsageError(f"quality.keep must be above or below, got {cfg.keep!r}")
        if cfg.keep == "below" and cfg.sampling != "threshold":
            raise UsageError("quality.keep=below works with --quality-sampling threshold only")
        if cfg.alpha <= 0:
            raise UsageError(f"--alpha must be positive, got {cfg.alpha}")
        self.cfg = cfg
        self.model = load_model(cfg.model)  # type: ignore[arg-type]
        grade = self.model.llmctl_grade
        if grade is not None and cfg.sampling == "pareto":
            raise UsageError(f"{cfg.model}: a grade model; --quality-sampling pareto needs a probability model")
        default = grade["threshold"] if grade is not None else 0.5
        self.threshold = float(cfg.threshold if cfg.threshold is not None else default)

    def keep(self, doc_id: str, score: float) -> bool:
        if self.cfg.keep == "below":
            return score < self.threshold
        if self.cfg.sampling == "threshold":
            return score >= self.threshold
        rng = np.random.default_rng([self.cfg.seed, xxhash.xxh3_64_intdigest(doc_id.encode("utf-8"))])
        return bool(rng.pareto(self.cfg.alpha) > 1.0 - score)

    def __call__(self, doc: Document, stats: Counter[str]) -> str | None:
        score = float(score_texts(self.model, [doc.text])[0])
        doc.meta["quality_score"] = score
        stats["quality.scored"] += 1
        if self.keep(doc.id, score):
            return None
        doc.meta[DETAIL_KEY] = f"{self.model.llmctl_label.removeprefix('__label__')} {score:.3f}"
        return "quality.high_score" if self.cfg.keep == "below" else "quality.low_score"


# ----------------------------------------------------------------------------- training


def _read_texts(paths: list[str], side: str, text_field: str = "text") -> tuple[list[str], list[dict[str, Any]]]:
    """Texts of llmctl datasets, JSONL(.gz) and Parquet files (the filter's readers, `text_field`),
    and .txt files (one document per line, as fastText's own format)."""
    if not paths:
        raise UsageError(f"give at least one --{side} DATASET or file")
    texts, lineage = [], []
    for p in paths:
        if fs.to_path(p).is_dir():
            ds = Dataset.open(p, columns=["text"])
            lineage.append(ds.lineage())
            for batch in ds.iter_batches(["text"]):
                texts += batch.column("text").to_pylist()
            continue
        if not fs.to_path(p).is_file():
            raise UsageError(f"{p}: no such file or dataset")
        lineage.append({"path": fs.display(p), "fingerprint": fingerprint_file(p)})
        if str(p).endswith((".txt", ".txt.gz")):
            with (gzip.open if str(p).endswith(".gz") else open)(p, "rt", encoding="utf-8") as f:
                texts += [line.rstrip("\n") for line in f if line.strip()]
        elif input_kind(p) in ("jsonl", "parquet"):
            texts += [
                r.text for r in read_input(p, str(p), ExtractConfig(text_field=text_field)) if isinstance(r, Document)
            ]
        else:
            raise UsageError(f"{p}: expected an llmctl dataset, .jsonl[.gz], .parquet or .txt file")
    return texts, lineage


def read_graded(
    paths: list[str], target: str, threshold: float, max_chars: int
) -> tuple[list[str], list[str], dict[str, float], list]:
    """(positive texts, negative texts, normalized text (cut to max_chars) -> grade, lineage) of graded datasets
    (`quality annotate` output): positive when `target` >= `threshold`; rows without a grade are left out."""
    pos: list[str] = []
    neg: list[str] = []
    grades: dict[str, float] = {}
    lineage = []
    for p in paths:
        if not fs.to_path(p).is_dir():
            raise UsageError(f"{p}: expected a graded dataset (llmctl quality annotate -o DIR)")
        ds = Dataset.open(p)
        if target not in ds.column_names or "text" not in ds.column_names:
            raise UsageError(f"{p}: has no {target!r} or text column; --target names the grade column")
        lineage.append(ds.lineage())
        for r in ds.iter_rows(["text", target]):
            g = r[target]
            if g is None or r["text"] is None:
                continue
            (pos if g >= threshold else neg).append(r["text"])
            grades[normalize_text(r["text"])[:max_chars]] = float(g)
    return pos, neg, grades, lineage


def _prf(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tp = int((truth & pred).sum())
    precision = tp / max(1, int(pred.sum()))
    recall = tp / max(1, int(truth.sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "accuracy": round(float((truth == pred).mean()), 4),
    }


def _ridge(model, texts: list[str], grades: list[float], alpha: float) -> dict[str, Any]:
    """Ridge regression of the grade on the model's sentence vectors (closed form, with an unpenalised intercept)."""
    x = np.stack([model.get_sentence_vector(t) for t in texts]).astype(np.float64)
    y = np.asarray(grades, dtype=np.float64)
    mx, my = x.mean(0), y.mean()
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - my))
    return {"weights": [round(float(v), 8) for v in w], "bias": round(float(my - mx @ w), 8)}


# fastText (0.9.x, also fasttext-numpy2) initialises only the first tenth of its input matrix when
# trained with one thread (DenseMatrix::uniform fills `thread` of ten blocks); the rest is whatever
# the allocator hands back. A fresh process gets zeroed pages from mmap, so the model is the same on
# every run; in a long-lived process (a notebook, `llmctl run`, the test suite) stale heap memory
# there made training diverge ("Encountered NaN") or give another model. So it trains in a process
# of its own, which writes the model file.
_TRAIN_SNIPPET = "import json, sys, fasttext; a = json.loads(sys.argv[1]); fasttext.train_supervised(**a['params']).save_model(a['out'])"


def train_fasttext(train_file: str, model_path: str, **params: Any) -> None:
    """fasttext.train_supervised(input=train_file, **params) in a fresh process; the model goes to model_path."""
    arg = json.dumps({"params": {"input": train_file, **params}, "out": model_path})
    r = subprocess.run([sys.executable, "-c", _TRAIN_SNIPPET, arg], capture_output=True, text=True)
    if r.returncode != 0 or not os.path.isfile(model_path):
        err = (r.stderr.strip().splitlines() or ["exit code %d" % r.returncode])[-1]
        if "NaN" in err:
            raise UsageError(
                "fastText training diverged (Encountered NaN): the training text is too small or "
                "too repetitive; give more distinct documents or a lower --lr"
            )
        raise UsageError(f"fastText training failed: {err}")


@exclusive_output("out", discard_unfinished=True)
def train_quality(
    positive: list[str],
    negative: list[str],
    out: str | Path,
    cfg: QualityTrainConfig | None = None,
    overwrite: bool = False,
    graded: list[str] | None = None,
) -> dict[str, Any]:
    """Train the classifier into directory `out`; returns its manifest (with held-out figures).

    With `graded` (datasets of `quality annotate`) instead of positive/negative, the sides are the
    documents graded at or above `cfg.grade_threshold` and below it, and the held-out figures
    add the Spearman correlation of the score with the grade."""
    import fasttext  # fasttext: kept out of --help and of the filter's import

    cfg = cfg or QualityTrainConfig()
    if not 0.0 < cfg.holdout < 1.0:
        raise UsageError(f"holdout must be between 0 and 1, got {cfg.holdout}")
    if cfg.head not in HEADS:
        raise UsageError(f"--head must be one of {', '.join(HEADS)}, got {cfg.head!r}")
    grade_head = bool(graded) and cfg.head != "binary"
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out}: exists and is not empty; pass --overwrite to replace it")
    grade_of: dict[str, float] = {}
    if graded:
        pos, neg, grade_of, pos_lineage = read_graded(graded, cfg.target, cfg.grade_threshold, cfg.max_chars)
        neg_lineage = []
    else:
        pos, pos_lineage = _read_texts(positive, "positive", cfg.text_field)
        neg, neg_lineage = _read_texts(negative, "negative", cfg.text_field)
    seen: set[int] = set()
    POS, NEG = cfg.labels
    sides: dict[str, list[str]] = {POS: [], NEG: []}
    duplicates = 0
    for label, texts in ((POS, pos), (NEG, neg)):
        for t in texts:
            norm = normalize_text(t)[: cfg.max_chars]
            h = exact_hash(norm)
            if not norm or h in seen:
                duplicates += 1
                continue
            seen.add(h)
            sides[label].append(norm)
    rng = np.random.default_rng(cfg.seed)
    train, held = [], []
    for label, texts in sides.items():
        if len(texts) < 2:
            raise UsageError(
                f"need at least 2 distinct {'positive' if label == POS else 'negative'} documents, got {len(texts)}"
            )
        perm = rng.permutation(len(texts))
        n_held = max(1, int(round(cfg.holdout * len(texts))))
        held += [(label, texts[i]) for i in perm[:n_held]]
        train += [(label, texts[i]) for i in perm[n_held:]]
    train = [train[i] for i in rng.permutation(len(train))]
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".train-") as tmp:
        train_file = os.path.join(tmp, "train.txt")
        with open(train_file, "w", encoding="utf-8") as f:
            for label, text in train:
                if grade_head:  # one label per grade; the split is the same as the binary head's
                    label = f"{GRADE_LABEL}{int(round(grade_of[text]))}"
                f.write(f"{label} {text}\n")
        tmp_model = os.path.join(tmp, MODEL_FILE)
        train_fasttext(
            train_file,
            tmp_model,
            epoch=cfg.epoch,
            lr=cfg.lr,
            wordNgrams=cfg.word_ngrams,
            dim=cfg.dim,
            bucket=cfg.bucket,
            minCount=cfg.min_count,
            thread=1,
            seed=cfg.seed,
            verbose=0,
        )
        model = fasttext.load_model(tmp_model)
        os.replace(tmp_model, out / MODEL_FILE)
    truth = np.array([label == POS for label, _ in held])
    head: dict[str, Any] | None = None
    if grade_head:
        head = {"head": cfg.head, "threshold": cfg.grade_threshold}
        if cfg.head == "ridge":
            head.update(_ridge(model, [t for _, t in train], [grade_of[t] for _, t in train], cfg.ridge_alpha))
        scores = score_texts(model, [t for _, t in held], cfg.max_chars, grade=head)
        metrics = _prf(truth, scores >= cfg.grade_threshold)
        held_true = np.array([grade_of[t] for _, t in held])
        metrics["mae"] = round(float(np.abs(scores - held_true).mean()), 4)
    else:
        scores = score_texts(model, [t for _, t in held], cfg.max_chars, label=POS)
        metrics = _prf(truth, scores >= cfg.threshold)
    if graded:
        from scipy.stats import spearmanr  # scipy: kept out of the filter workers' import

        held_grades = [grade_of.get(t) for _, t in held]
        ok = [i for i, g in enumerate(held_grades) if g is not None]
        rho = spearmanr([scores[i] for i in ok], [held_grades[i] for i in ok]).statistic if len(ok) > 2 else None
        metrics["spearman"] = None if rho is None or np.isnan(rho) else round(float(rho), 4)
    p, n = (x.removeprefix("__label__") for x in (POS, NEG))
    stats = {
        "heldout": metrics,
        "label": POS,
        **({"grade_head": head} if head is not None else {}),
        "train_docs": {p: sum(lab == POS for lab, _ in train), n: sum(lab == NEG for lab, _ in train)},
        "heldout_docs": {p: int(truth.sum()), n: int((~truth).sum())},
        "duplicates_dropped": duplicates,
        "vocabulary": len(model.words),
    }
    manifest = {
        "stage": "quality",
        "config": to_dict(cfg),
        "inputs": {"graded": pos_lineage} if graded else {"positive": pos_lineage, "negative": neg_lineage},
        "model": {"path": MODEL_FILE, "sha256": file_sha256(out / MODEL_FILE)},
        "stats": stats,
    }
    manifest = write_manifest(out, manifest)
    shutil.rmtree(out / "__pycache__", ignore_errors=True)
    return manifest
