"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models", MassiveText,
appendix A.1.1 and table A1), with the thresholds of datatrove's `GopherQualityFilter` and
`GopherRepetitionFilter`. A threshold of 0 switches its rule off (datatrove uses None).

Quality (`GopherQualityFilter`), checked in this order, first failure wins:
- "gopher.word_count": fewer than 50 or more than 100,000 words;
- "gopher.avg_word_length": mean word length outside [3, 10] characters;
- "gopher.symbol_ratio": more than 0.1 "#" per word, or more than 0.1 ellipses ("..." or "…")
  per word (two separate ratios, as in the paper's "for either the hash symbol or the ellipsis"
  and datatrove, not their sum);
- "gopher.bullet_lines": more than 90% of the lines start with a bullet (after lstrip);
- "gopher.ellipsis_lines": more than 30% of the lines end with "..." or "…";
- "gopher.alpha_words": fewer than 80% of the words contain an alphabetic character;
- "gopher.stop_words": fewer than 2 of the words are stop words (the, be, to, of, and, that, have,
  with).

Repetition (`GopherRepetitionFilter`): fraction of duplicated paragraphs / lines (by count:
"gopher_rep.dup_para_frac", "gopher_rep.dup_line_frac"; by characters over the length of the text:
"..._char_frac"), the characters covered by the most frequent 2/3/4-gram (count x its length, as
datatrove: "gopher_rep.top_2gram" ...), and the characters in duplicated 5..10-grams
("gopher_rep.dup_5gram" ...). Duplicated n-grams are counted as datatrove does: scan left to
right, and when the n-gram at a position was seen before, count its characters and jump n words
ahead, so overlapping duplicates are counted once.

Choices (datatrove tokenizes with nltk, which is not available offline):
- Words are `str.split()` tokens. A token without any `\\w` character ("-", "...", "—") is
  punctuation: it is not a word for the word count and the mean length, but it is for the alpha
  ratio (a line of dashes lowers it). Lengths include attached punctuation ("end." is 4 chars),
  which raises the mean length of English prose by about 0.2 chars next to nltk's tokens.
- Stop words are compared lowercased with the surrounding punctuation stripped ("The," counts).
- Lines for the bullet and ellipsis ratios are the non-blank lines, so blank lines between
  paragraphs do not dilute them (datatrove counts blank lines too).
- Repetition: paragraphs are split on blank lines (`\\n` + lines that hold only whitespace +
  `\\n`), lines on newlines; both are stripped and empty ones dropped. n-grams are tuples of
  `str.split()` tokens; an n-gram's length is its words' lengths plus n-1 spaces. When a text has
  no duplicated 5-gram it has no duplicated longer n-gram, so those scans are skipped.
"""

from __future__ import annotations

import re
import string
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from itertools import filterfalse

import numpy as np

from llmctl.data.document import Document

STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
BULLETS = ["•", "●", "○", "◦", "‣", "⁃", "∙", "·", "▪", "■", "►", "➢", "-", "*", "–"]
_PUNCT = string.punctuation + "“”‘’«»…—–•·"
_has_word = re.compile(r"\w").search
_has_alpha = re.compile(r"[^\W\d_]").search
_PARAGRAPH_SPLIT = re.compile(r"\n(?:[^\S\n]*\n)+")


def word_count(text: str) -> int:
    """Words as the word-count rule counts them: whitespace tokens with a word character."""
    return sum(1 for t in text.split() if _has_word(t))


@dataclass
class GopherQualityConfig:
    enabled: bool = True
    min_doc_words: int = 50
    max_doc_words: int = 100000
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    # datatrove's name; the rule is: at least this fraction of words has an alphabetic character.
    max_non_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2
    stop_words: list[str] = field(default_factory=lambda: list(STOP_WORDS))
    bullets: list[str] = field(default_factory=lambda: list(BULLETS))


class GopherQualityFilter:
    name = "gopher"

    def __init__(self, cfg: GopherQualityConfig | None = None):
        self.cfg = cfg or GopherQualityConfig()
        self.stop_words = frozenset(w.lower() for w in self.cfg.stop_words)
        self.bullets = tuple(self.cfg.bullets)

    def __call__(self, doc: Document, stats: Counter[str]) -> str | None:
        cfg = self.cfg
        if not cfg.enabled:
            return None
        text = doc.text
        tokens = doc.words()
        # tokens without a word character: only the not-alphanumeric ones are searched (in C, filterfalse)
        punct = [t for t in filterfalse(str.isalnum, tokens) if not _has_word(t)]
        n_words = len(tokens) - len(punct)
        if n_words == 0 or (cfg.min_doc_words and n_words < cfg.min_doc_words):
            return "gopher.word_count"
        if cfg.max_doc_words and n_words > cfg.max_doc_words:
            return "gopher.word_count"

        avg_len = (sum(map(len, tokens)) - sum(map(len, punct))) / n_words
        if (cfg.min_avg_word_length and avg_len < cfg.min_avg_word_length) or (
            cfg.max_avg_word_length and avg_len > cfg.max_avg_word_length
        ):
            return "gopher.avg_word_length"

        if cfg.max_symbol_word_ratio:
            if text.count("#") / n_words > cfg.max_symbol_word_ratio:
                return "gopher.symbol_ratio"
            if (text.count("...") + text.count("…")) / n_words > cfg.max_symbol_word_ratio:
                return "gopher.symbol_ratio"

        lines = [ln.strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln]
        if cfg.max_bullet_lines_ratio and self.bullets:
            bullet = sum(1 for ln in lines if ln.startswith(self.bullets))
            if bullet / len(lines) > cfg.max_bullet_lines_ratio:
                return "gopher.bullet_lines"
        if cfg.max_ellipsis_lines_ratio:
            ellipsis = sum(1 for ln in lines if ln.endswith(("...", "…")))
            if ellipsis / len(lines) > cfg.max_ellipsis_lines_ratio:
                return "gopher.ellipsis_lines"

        if cfg.max_non_alpha_words_ratio:
            alpha = len(tokens) - sum(1 for t in filterfalse(str.isalpha, tokens) if not _has_alpha(t))
            if alpha / len(tokens) < cfg.max_non_alpha_words_ratio:
                return "gopher.alpha_words"

        if cfg.min_stop_words:
            found = 0
            for w in tokens:  # a punctuation token is no word: checked only when it matches
                if w.strip(_PUNCT).lower() in self.stop_words and (w.isalnum() or _has_word(w)):
                    found += 1
                    if found >= cfg.min_stop_words:
                        break
            else:
                return "gopher.stop_words"
        return None


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, their total characters)."""
    seen: set[str] = set()
    n_dup = chars = 0
    for x in items:
        if x in seen:
            n_dup += 1
            chars += len(x)
        else:
            seen.add(x)
    return n_dup, chars


class NGrams:
    """The n-grams of a word list as integer ids, built level by level (n = 1, 2, ...).

    Level 1 numbers the distinct words; level n numbers the distinct pairs (n-1-gram id at i,
    word id at i+n-1), so two positions share an id exactly when their n-grams are equal (no
    hashing, no tuples). For each level: `ids` (one per position), `first` (the first position of
    each id) and `counts`.
    """

    def __init__(self, words: list[str]):
        index = {w: i for i, w in enumerate(dict.fromkeys(words))}
        self.vocab = max(len(index), 1)
        self._word_ids = np.fromiter(map(index.__getitem__, words), np.int64, len(words))
        lens = np.fromiter(map(len, words), np.int64, len(words))
        self.cum = np.concatenate(([0], np.cumsum(lens)))  # cum[j] - cum[i]: letters of words[i:j]
        self._levels: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _number(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ids of equal keys, the first position of each id, and its count (one stable sort)."""
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        start = np.empty(len(keys), bool)
        start[:1] = True
        np.not_equal(ordered[1:], ordered[:-1], out=start[1:])
        ids = np.empty(len(keys), np.int64)
        ids[order] = np.cumsum(start) - 1
        starts = np.flatnonzero(start)
        return ids, order[starts], np.diff(np.append(starts, len(keys)))

    def level(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, first, counts) of the n-grams (empty arrays when there are fewer than n words).

        The n-gram at i is the pair of (n-1)-grams at i and i+1; when either occurs once, so does
        the n-gram, so only the positions where both repeat are sorted.
        """
        if n not in self._levels:
            if n == 1:
                self._levels[1] = self._number(self._word_ids)
            else:
                prev, _, prev_counts = self.level(n - 1)
                size = len(prev) - 1
                if size <= 0:
                    empty = np.zeros(0, np.int64)
                    self._levels[n] = (empty, empty, empty)
                    return self._levels[n]
                repeated = prev_counts[prev] > 1
                both = np.flatnonzero(repeated[:-1] & repeated[1:])
                once = np.ones(size, bool)
                once[both] = False
                single = np.flatnonzero(once)
                ids_b, first_b, counts_b = self._number(prev[both] * len(prev_counts) + prev[both + 1])
                ids = np.empty(size, np.int64)
                ids[both] = ids_b
                ids[single] = len(first_b) + np.arange(len(single))
                first = np.concatenate((both[first_b], single))
                counts = np.concatenate((counts_b, np.ones(len(single), np.int64)))
                self._levels[n] = (ids, first, counts)
        return self._levels[n]

    def top_chars(self, n: int) -> int:
        """Characters covered by the most frequent n-gram (the first to appear among ties):
        count x (its words' letters + n-1 spaces)."""
        _, first, counts = self.level(n)
        if not len(counts):
            return 0
        top = counts.max()
        pos = int(first[counts == top].min())
        return int(top) * (int(self.cum[pos + n] - self.cum[pos]) + n - 1)

    def dup_chars(self, n: int) -> int:
        """Characters in duplicated n-grams, left to right, jumping n words after each duplicate.

        Only positions whose n-gram appeared before can be duplicates, so the scan visits those;
        an n-gram counts as seen when one of its earlier positions was visited, and the first
        position of an n-gram is visited unless a jump skipped it.
        """
        ids, first, counts = self.level(n)
        if len(first) == len(ids):
            return 0
        later = np.ones(len(ids), bool)
        later[first] = False
        positions = np.flatnonzero(later)
        multi = np.flatnonzero(counts > 1)  # only n-grams that occur again can be seen again
        by_first = np.argsort(first[multi])
        firsts = first[multi[by_first]].tolist()
        rank = np.empty(len(first), np.int64)
        rank[multi[by_first]] = np.arange(len(multi))  # seen[] is indexed by the rank of a first position
        seen = bytearray(b"\x01") * len(multi)  # 0: the n-gram's first position was skipped
        hits = []
        i = 0
        for c, g in zip(positions.tolist(), rank[ids[positions]].tolist()):
            if c < i:
                continue
            if seen[g]:
                hits.append(c)
                i = c + n
                j = bisect_right(firsts, c)
                while j < len(firsts) and firsts[j] < i:
                    seen[j] = 0
                    j += 1
            else:
                seen[g] = 1
                i = c + 1
        at = np.array(hits, np.int64)
        return int((self.cum[at + n] - self.cum[at]).sum()) + len(hits) * (n - 1)


def top_ngram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent n-gram: count x length (0 if fewer than n words)."""
    return NGrams(words).top_chars(n)


def dup_ngram_chars(words: list[str], n: int) -> int:
    """Characters in duplicated n-grams, overlapping duplicates counted once (datatrove's scan)."""
    return NGrams(words).dup_chars(n)


@dataclass
class GopherRepetitionConfig:
    enabled: bool = True
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    # [n, max fraction of characters] pairs
    top_n_grams: list[list[float]] = field(default_factory=lambda: [[2, 0.2], [3, 0.18], [4, 0.16]])
    dup_n_grams: list[list[float]] = field(
        default_factory=lambda: [[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11], [10, 0.10]]
    )


class GopherRepetitionFilter:
    name = "gopher_rep"

    def __init__(self, cfg: GopherRepetitionConfig | None = None):
        self.cfg = cfg or GopherRepetitionConfig()
        for pair in [*self.cfg.top_n_grams, *self.cfg.dup_n_grams]:
            if len(pair) != 2 or int(pair[0]) != pair[0] or pair[0] < 1:
                raise ValueError(f"gopher_rep n-gram rules are [n, fraction] pairs, got {pair!r}")
        self.top_n_grams = [(int(n), float(f)) for n, f in self.cfg.top_n_grams]
        self.dup_n_grams = sorted((int(n), float(f)) for n, f in self.cfg.dup_n_grams)

    def __call__(self, doc: Document, stats: Counter[str]) -> str | None:
        cfg = self.cfg
        if not cfg.enabled:
            return None
        text = doc.text
        size = len(text)
        if size == 0 or not text.strip():
            return None

        paragraphs = [p.strip() for p in _PARAGRAPH_SPLIT.split(text.strip())]
        paragraphs = [p for p in paragraphs if p]
        n_dup, chars = _duplicates(paragraphs)
        if cfg.dup_para_frac and n_dup / len(paragraphs) > cfg.dup_para_frac:
            return "gopher_rep.dup_para_frac"
        if cfg.dup_para_char_frac and chars / size > cfg.dup_para_char_frac:
            return "gopher_rep.dup_para_char_frac"

        lines = [ln.strip() for ln in text.split("\n")]
        lines = [ln for ln in lines if ln]
        n_dup, chars = _duplicates(lines)
        if cfg.dup_line_frac and n_dup / len(lines) > cfg.dup_line_frac:
            return "gopher_rep.dup_line_frac"
        if cfg.dup_line_char_frac and chars / size > cfg.dup_line_char_frac:
            return "gopher_rep.dup_line_char_frac"

        grams = NGrams(doc.words())
        for n, frac in self.top_n_grams:
            if frac and grams.top_chars(n) / size > frac:
                return f"gopher_rep.top_{n}gram"

        for n, frac in self.dup_n_grams:
            if not frac:
                continue
            chars = grams.dup_chars(n)
            if chars == 0:
                break  # no duplicated n-gram means no duplicated longer n-gram either
            if chars / size > frac:
                return f"gopher_rep.dup_{n}gram"
        return None
