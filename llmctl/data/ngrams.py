"""Word n-grams on one normalization, shared by decontamination (`llmctl filter --decontaminate`)
and the contamination measure (`llmctl eval --task contamination`).

A text is lower-cased (`str.lower`) and split into `\\w+` words, so case, punctuation and line
wrapping do not change its n-grams. `word_spans` gives the same words with their character
offsets in the original text, for cutting a matched span out of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The normalized words of `text`."""
    return WORD.findall(text.lower())


def grams(ws: list[str], n: int) -> Iterable[tuple[str, ...]]:
    """The n-grams of a word list, in order (none when it has fewer than n words)."""
    return zip(*(ws[i:] for i in range(n)))


def word_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """(words(text), the (start, end) offset in `text` of each word).

    `str.lower` keeps the length of almost all text; where it does not (a few characters such
    as "İ" lower to two), the offsets come from lowering character by character.
    """
    low = text.lower()
    if len(low) == len(text):
        ms = list(WORD.finditer(low))
        return [m.group() for m in ms], [m.span() for m in ms]
    origin: list[int] = []  # origin[i]: the offset in `text` of character i of the lowered text
    for i, ch in enumerate(text):
        origin.extend([i] * len(ch.lower()))
    origin.append(len(text))
    ms = list(WORD.finditer(low))
    return [m.group() for m in ms], [(origin[m.start()], origin[m.end() - 1] + 1) for m in ms]
