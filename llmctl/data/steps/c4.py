"""C4 cleaning rules (Raffel et al. 2019, "Exploring the Limits of Transfer Learning", section 2.2).

Thresholds and line order follow the TFDS reference implementation (`clean_page` in
`tensorflow_datasets/text/c4_utils.py`); datatrove's `C4QualityFilter` has the same line order but
other defaults (3 words a line, 5 sentences a page). Per line, after `strip()`:

1. a word (`str.split()`) longer than `max_word_length` (1000) chars removes the line;
2. citation markers `[1]`, `[]`, `[edit]`, `[citation needed]` are cut out (case-insensitive here;
   TFDS is case-sensitive, so `[Edit]` survives there);
3. the line must end in `. ! ?` or a closing quote (`"`, `'`, and the typographic `”` and `’`,
   which TFDS does not accept), and must not end in an ellipsis `...`;
4. it must have at least `min_words_per_line` (5) words, counted after the citations are cut;
5. a line containing "javascript" (any case) is removed;
6. a line containing a policy phrase ("terms of use", "privacy policy", "cookie policy",
   "uses cookies", "use of cookies", "use cookies", any case) is removed.

Then the page is dropped if it contains "lorem ipsum" (any case), a curly bracket "{", fewer than
`min_num_sentences` (3) sentences in its kept lines, or a word of the LDNOOBW English bad-words
list (shipped in `resources/badwords_en.txt`). The kept text is the kept lines joined by "\n".

Choices:
- `page_checks_on_kept_lines=False` (default) reads the paper literally: "lorem ipsum", "{" and the
  bad words anywhere in the page drop it, even in lines the line rules would remove. `True` is the
  TFDS/datatrove order: lorem ipsum and "{" are only seen in lines that passed rules 1-4 (and "{"
  only in lines that passed rule 5), and bad words only in the kept text. Bad words follow the
  same switch because TFDS, too, checks them only on the kept lines.
- Sentences: TFDS counts them with nltk's punkt, which is not available offline. Here a sentence
  ends at a run of `.!?` (optionally followed by closing quotes/brackets) followed by whitespace or
  the end of the line; a kept line counts as at least one sentence. This over-counts after
  abbreviations ("Mr. Smith" is two sentences), so a page can reach 3 where punkt counts 2.
- Bad words are matched as in later TFDS versions and datatrove: lowercased text, an entry
  matches when flanked by non-word characters or the string ends, `(?:\\W|^)(entry)(?:\\W|$)`.
  (The 2020 `clean_page` checked each kept line with `[^a-z](entry)[^a-z]`, before counting
  sentences; here "c4.too_few_sentences" wins over "c4.bad_words" when both apply.) Single-word
  entries (276 of 403) are looked up in the set of `\\w+` runs of the page, which is the same
  test; the other entries are only searched with the regex when all their `\\w+` runs occur in
  the page. `tests/data/steps/test_c4.py` checks this against the plain regex.
- Blank lines are skipped without being counted as removed lines.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources

from llmctl.data.document import Document

CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
END_PUNCTUATION = (".", "!", "?", '"', "”", "’", "'")
ELLIPSIS = "..."
POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
# A sentence ends at .!? (plus closing quotes/brackets) followed by whitespace; see the docstring.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+")
_WORD_RUN = re.compile(r"\w+")


@dataclass
class C4Config:
    enabled: bool = True
    # False: the paper's text (lorem ipsum, "{" and bad words anywhere in the page drop it);
    # True: TFDS/datatrove order (only the lines that survived the line rules are checked).
    page_checks_on_kept_lines: bool = False
    filter_too_long_word: bool = True
    max_word_length: int = 1000
    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    filter_too_few_words: bool = True
    min_words_per_line: int = 5
    filter_javascript: bool = True
    filter_policy: bool = True
    filter_lorem_ipsum: bool = True
    filter_curly_bracket: bool = True
    filter_too_few_sentences: bool = True
    min_num_sentences: int = 3
    filter_bad_words: bool = True


def count_sentences(line: str) -> int:
    """Sentences in one line: runs of .!? followed by whitespace or the end (at least 1)."""
    return max(1, sum(1 for s in _SENTENCE_END.split(line) if s.strip()))


@functools.lru_cache(maxsize=1)
def load_badwords() -> tuple[str, ...]:
    """The LDNOOBW English list, one entry a line, blank lines skipped (in file order)."""
    path = resources.files("llmctl.data").joinpath("resources", "badwords_en.txt")
    text = path.read_text(encoding="utf-8")
    return tuple(dict.fromkeys(w.strip() for w in text.splitlines() if w.strip()))


def badwords_regex(entries: tuple[str, ...]) -> re.Pattern[str]:
    """The TFDS matcher: one alternation, each entry flanked by non-word chars or the ends."""
    return re.compile(r"(?:\W|^)({})(?:\W|$)".format("|".join(re.escape(w) for w in entries)))


class BadWords:
    """Fast equivalent of `badwords_regex(entries).search(lowercased_text)`."""

    def __init__(self, entries: tuple[str, ...]):
        self.single = frozenset(w for w in entries if _WORD_RUN.fullmatch(w))
        self.multi = tuple((w, frozenset(_WORD_RUN.findall(w))) for w in entries if w not in self.single)
        self._regex = functools.lru_cache(maxsize=256)(badwords_regex)

    def find(self, lower: str) -> str | None:
        """The first (alphabetically, among the hits of the fast path) entry found in `lower`."""
        runs = set(_WORD_RUN.findall(lower))
        hits = runs & self.single
        if hits:
            return min(hits)
        # An entry can only match if each of its \w+ runs is a whole \w+ run of the text.
        candidates = tuple(w for w, parts in self.multi if parts <= runs)
        if candidates:
            m = self._regex(candidates).search(lower)
            if m:
                return m.group(1)
        return None


@functools.lru_cache(maxsize=1)
def default_badwords() -> BadWords:
    return BadWords(load_badwords())


class C4Filter:
    """The C4 rules as one filter step (see the module docstring)."""

    name = "c4"

    def __init__(self, cfg: C4Config | None = None):
        self.cfg = cfg or C4Config()
        self.badwords = default_badwords() if self.cfg.filter_bad_words else None

    def __call__(self, doc: Document, stats: Counter[str]) -> str | None:
        cfg = self.cfg
        if not cfg.enabled:
            return None
        text = doc.text
        literal = not cfg.page_checks_on_kept_lines
        if literal:
            if cfg.filter_lorem_ipsum and "lorem ipsum" in text.lower():
                return "c4.lorem_ipsum"
            if cfg.filter_curly_bracket and "{" in text:
                return "c4.curly_bracket"

        kept: list[str] = []
        num_sentences = 0
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if cfg.filter_too_long_word and any(len(w) > cfg.max_word_length for w in line.split()):
                stats["c4.line_removed.too_long_word"] += 1
                continue
            if cfg.remove_citations and "[" in line:
                line, n = CITATION_RE.subn("", line)
                if n:
                    stats["c4.citations_removed"] += n
            if cfg.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
                stats["c4.line_removed.no_terminal_punct"] += 1
                continue
            if cfg.filter_too_few_words and len(line.split()) < cfg.min_words_per_line:
                stats["c4.line_removed.too_few_words"] += 1
                continue
            lower = line.lower()
            if not literal and cfg.filter_lorem_ipsum and "lorem ipsum" in lower:
                return "c4.lorem_ipsum"
            if cfg.filter_javascript and "javascript" in lower:
                stats["c4.line_removed.javascript"] += 1
                continue
            if not literal and cfg.filter_curly_bracket and "{" in line:
                return "c4.curly_bracket"
            if cfg.filter_policy and any(p in lower for p in POLICY_SUBSTRINGS):
                stats["c4.line_removed.policy"] += 1
                continue
            if not line:  # a line of citation markers, with the punctuation/word rules off
                continue
            kept.append(line)
            if cfg.filter_too_few_sentences:
                num_sentences += count_sentences(line)

        if cfg.filter_too_few_sentences and num_sentences < cfg.min_num_sentences:
            return "c4.too_few_sentences"
        new_text = "\n".join(kept)
        if self.badwords is not None:
            if self.badwords.find((text if literal else new_text).lower()) is not None:
                return "c4.bad_words"
        doc.text = new_text
        return None
