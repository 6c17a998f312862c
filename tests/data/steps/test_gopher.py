"""Gopher quality and repetition rules: a kept document and a dropped one per rule, with reasons.

ROXY is a real story from TinyStories (Eldan & Li 2023), copied from
/work/shared/data/tinystories/tinystories_valid_head.txt (lines 5-11).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from llmctl.data.document import Document
from llmctl.data.steps.gopher import (
    GopherQualityConfig,
    GopherQualityFilter,
    GopherRepetitionConfig,
    GopherRepetitionFilter,
    dup_ngram_chars,
    top_ngram_chars,
)

P1 = (
    "Once upon a time, in a big forest, there lived a rhinoceros named Roxy. Roxy loved to climb. She climbed "
    "trees, rocks, and hills. One day, Roxy found an icy hill. She had never seen anything like it before. It "
    "was shiny and cold, and she wanted to climb it."
)
P2 = (
    "Roxy tried to climb the icy hill, but it was very slippery. She tried again and again, but she kept "
    "falling down. Roxy was sad. She wanted to climb the icy hill so much. Then, she saw a little bird named "
    'Billy. Billy saw that Roxy was sad and asked, "Why are you sad, Roxy?"'
)
P3 = (
    "Roxy told Billy about the icy hill and how she couldn't climb it. Billy said, \"I have an idea! Let's find "
    'some big leaves to put under your feet. They will help you climb the icy hill." Roxy and Billy looked for '
    "big leaves and found some. Roxy put the leaves under her feet and tried to climb the icy hill again."
)
P4 = (
    "This time, Roxy didn't slip. She climbed and climbed until she reached the top of the icy hill. Roxy was "
    "so happy! She and Billy played on the icy hill all day. From that day on, Roxy and Billy were the best of "
    "friends, and they climbed and played together all the time. And Roxy learned that with a little help from "
    "a friend, she could climb anything."
)
ROXY = "\n\n".join([P1, P2, P3, P4])
N_ROXY = len(ROXY.split())  # 235 words, none of them pure punctuation


def quality(text: str, **cfg) -> str | None:
    return GopherQualityFilter(GopherQualityConfig(**cfg))(Document(id="d", text=text), Counter())


def repetition(text: str, **cfg) -> str | None:
    return GopherRepetitionFilter(GopherRepetitionConfig(**cfg))(Document(id="d", text=text), Counter())


# Distinct real sentences from other TinyStories stories (lines 13-37 of the same file).
SENTENCES = [
    "Daisy was very small, but she was also very happy.",
    "The dog was big and had a name too.",
    "Every day, Max would come to the yard to play.",
    "And even though Daisy was small, she knew that she had a big friend in Max.",
    "Sue loved to help her mom around the house.",
    "One day, her mom asked her to wipe the table after they ate their lunch.",
    "As Sue was wiping the table, she saw a pretty candle on the window sill.",
    "Sue carefully lit the candle and put it on the table.",
    "Her mom was so happy to see the pretty candle.",
    "They both sat and watched the candle burn.",
    "The moral of the story is to always be thoughtful and careful when helping others.",
    "One day, a little boy came to the farm.",
    "The boy kneeled down to talk to the cow.",
    "So, he got another cow to be friends with the sad cow.",
    "And the kind farmer, the little boy, and the two cows all lived happily ever after.",
    "They loved to play together in the big green park near their house.",
    "One sunny day, they went to the park to play.",
    "While playing, Tom saw a big sour lemon on the ground.",
    "He wanted to play with it, but when he touched it, it started to roll away.",
    "Tom ran after the lemon, trying to catch it.",
    "But as he ran, Tom got lost in the park.",
    "Lucy looked around, but she could not find Tom.",
    "She searched the park for her friend.",
    "At last, she found him near a big tree.",
]


def sentences(n: int) -> list[str]:
    return SENTENCES[:n]


# ----------------------------------------------------------------------------- quality


def test_real_story_is_kept():
    assert N_ROXY == 235
    assert quality(ROXY) is None
    assert repetition(ROXY) is None


def test_word_count():
    words = ROXY.split()
    assert quality(" ".join(words[:50])) is None
    assert quality(" ".join(words[:49])) == "gopher.word_count"
    assert quality(" ".join(words[:49]) + " — ...") == "gopher.word_count"  # punctuation is not a word
    assert quality("") == "gopher.word_count"
    long = " ".join((words * 460)[:100001])
    assert quality(long) == "gopher.word_count"
    assert quality(long, max_doc_words=0) is None
    assert quality(" ".join((words * 460)[:100000])) is None


def test_avg_word_length():
    short = " ".join(["I am a cat and so is he. We go to the sea."] * 6)
    assert quality(short) == "gopher.avg_word_length"
    long = " ".join(
        [
            "Internationalization and standardization of telecommunications infrastructure is extraordinarily "
            "complicated."
        ]
        * 8
    )
    assert quality(long) == "gopher.avg_word_length"
    assert quality(long, max_avg_word_length=0) is None


def test_symbol_ratio_hash():
    assert quality(ROXY + "\n" + " ".join(["#roxy"] * 20)) is None  # 20 / 255 words
    assert quality(ROXY + "\n" + " ".join(["#roxy"] * 30)) == "gopher.symbol_ratio"  # 30 / 265


def test_symbol_ratio_ellipsis():
    assert quality(ROXY.replace(". ", "... ", 15)) is None  # 15 / 235 words
    assert quality(ROXY.replace(". ", "… ", 15).replace(", ", "... ", 15)) == "gopher.symbol_ratio"  # 30 / 235


def test_bullet_lines():
    lines = [f"• Roxy and Billy climbed hill number {i} with the bird." for i in range(19)]
    assert quality("\n".join(lines + [P1])) == "gopher.bullet_lines"  # 19 / 20
    assert quality("\n".join(["- " + ln[2:] for ln in lines] + [P1])) == "gopher.bullet_lines"
    assert quality("\n".join(lines[:9] + [P1, P2, P3, P4])) is None  # 9 / 13
    # Blank lines do not count as lines.
    assert quality("\n\n".join(lines + [P1])) == "gopher.bullet_lines"


def test_ellipsis_lines():
    lines = sentences(10)
    for i in range(4):
        lines[i] = lines[i][:-1] + "..."
    assert quality("\n".join(lines)) == "gopher.ellipsis_lines"  # 4 / 10 lines, 4 / 100 words
    lines[3] = lines[3][:-3] + "."
    assert quality("\n".join(lines)) is None  # 3 / 10
    lines[3] = lines[3][:-1] + "…"
    assert quality("\n".join(lines)) == "gopher.ellipsis_lines"


def test_alpha_words():
    numbers = " ".join(str(1990 + i) for i in range(60))  # 235 / 295 tokens have a letter
    assert quality(ROXY + "\n" + numbers) == "gopher.alpha_words"
    assert quality(ROXY + "\n" + numbers[: 5 * 40]) is None  # 235 / 275
    dashes = " ".join(["---"] * 60)  # punctuation tokens count against the ratio too
    assert quality(ROXY + "\n" + dashes) == "gopher.alpha_words"


def test_stop_words():
    text = (
        "Roxy climbed trees, rocks, hills. Billy sang songs all day long. Roxy found an icy hill. "
        'She tried again, but kept falling down. Roxy was sad. Billy said, "I know! Let\'s find big leaves." '
        "Roxy put leaves under her feet. This time Roxy did not slip. She reached its top. Roxy was so happy! "
        "Roxy learned something: a little help from a friend can do wonders."
    )
    assert len(text.split()) >= 50
    assert quality(text) == "gopher.stop_words"
    assert quality(text + " The end.") == "gopher.stop_words"  # one stop word
    assert quality(text + " The end, with Billy.") is None  # "The" and "with" (case, punctuation)
    assert quality(text, min_stop_words=0) is None
    # a punctuation token is not a word, so not a stop word either, whatever the list says
    assert quality(text + " § §", stop_words=["§"]) == "gopher.stop_words"
    assert quality(text + " §x §x", stop_words=["§x"]) is None


def test_disabled_quality_step():
    assert quality("", enabled=False) is None


# --------------------------------------------------------------------------- repetition


def test_dup_para_frac():
    assert repetition("\n\n".join([P1, P2, P1, P2])) == "gopher_rep.dup_para_frac"  # 2 / 4
    only_para_frac = {"dup_para_char_frac": 0, "dup_line_char_frac": 0, "top_n_grams": [], "dup_n_grams": []}
    assert repetition("\n\n".join([P1, P2, P3, P4, P1]), **only_para_frac) is None  # 1 / 5
    # Lines holding only whitespace separate paragraphs too.
    assert repetition(f"{P1}\n \n{P2}\n\t\n{P1}\n\n{P2}") == "gopher_rep.dup_para_frac"


def test_dup_para_char_frac():
    paras = sentences(10) + [P4, P4]  # 1 duplicate out of 12, but P4 is 28% of the characters
    assert repetition("\n\n".join(paras)) == "gopher_rep.dup_para_char_frac"
    assert repetition("\n\n".join(sentences(10) + [P4])) is None


def test_dup_line_frac():
    lines = sentences(10) + ["Yes."] * 6  # 5 duplicates out of 16 lines, 20 characters
    assert repetition("\n".join(lines)) == "gopher_rep.dup_line_frac"
    assert repetition("\n".join(sentences(10) + ["Yes."] * 3)) is None  # 2 / 13


def test_dup_line_char_frac():
    lines = sentences(16) + [P4, P4]  # one paragraph; 1 / 18 lines duplicated, 21.7% of characters
    assert repetition("\n".join(lines)) == "gopher_rep.dup_line_char_frac"
    assert repetition("\n".join(sentences(16) + [P4])) is None


def test_top_ngrams():
    text = " ".join(f"big dog w{i}" for i in range(100))  # "big dog" covers ~59% of the characters
    assert repetition(text) == "gopher_rep.top_2gram"
    text3 = " ".join(f"the big dog went{i}" for i in range(100))
    assert repetition(text3, top_n_grams=[[2, 0], [3, 0.18]]) == "gopher_rep.top_3gram"
    assert repetition(text3, top_n_grams=[[4, 0.16]]) is None  # every 4-gram is unique


def test_dup_ngrams():
    # P4 repeated inside a longer paragraph: no duplicated line or paragraph, but duplicated 5..10-grams.
    text = "\n\n".join([P1, P4, P2, "And so it went. " + P4])
    assert repetition(text) == "gopher_rep.dup_5gram"
    assert repetition(text, dup_n_grams=[[10, 0.10]]) == "gopher_rep.dup_10gram"
    assert repetition(text, dup_n_grams=[]) is None


def test_rule_order_and_disabled():
    assert repetition("") is None
    assert repetition("\n\n".join([P1, P1]), enabled=False) is None
    with pytest.raises(ValueError):
        GopherRepetitionFilter(GopherRepetitionConfig(top_n_grams=[[2.5, 0.2]]))


# -------------------------------------------------------------------- n-gram arithmetic


def _naive_dup(words: list[str], n: int) -> int:
    """datatrove's find_all_duplicate on joined strings, written out plainly."""
    seen: set[str] = set()
    chars = i = 0
    while i < len(words) - n + 1:
        gram = " ".join(words[i : i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def _naive_top(words: list[str], n: int) -> int:
    grams = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0
    gram, count = grams.most_common(1)[0]
    return len(gram) * count


def test_ngram_counts_match_a_plain_implementation():
    rng = random.Random(0)
    vocab = ROXY.split()[:12]
    for trial in range(300):
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 60))]
        for n in (2, 3, 4, 5, 7, 10):
            assert dup_ngram_chars(words, n) == _naive_dup(words, n), (trial, n)
            assert top_ngram_chars(words, n) == _naive_top(words, n), (trial, n)
    words = ROXY.split()
    assert dup_ngram_chars(words * 2, 5) == _naive_dup(words * 2, 5) > 0


# ------------------------------------------------------------------------------- speed


def _long_page(n_words: int, seed: int = 0) -> str:
    """Paragraphs of shuffled story words: natural word lengths, few repeated n-grams."""
    rng = random.Random(seed)
    vocab = ROXY.split()
    paras, total = [], 0
    while total < n_words:
        k = rng.randint(40, 120)
        paras.append(" ".join(rng.choice(vocab) for _ in range(k)))
        total += k
    return "\n\n".join(paras)


def test_50k_word_pages():
    """Long pages run through every rule (speed: benchmarks/filter.py, not a timed test)."""
    page = _long_page(50_000)
    assert quality(page) is None
    assert repetition(page) is None
    # Worst case for the n-gram scans: a highly repeated page with every rule run to the end.
    page = " ".join([ROXY] * 230)  # ~ 50k words
    ones = {"dup_line_frac": 0, "dup_para_frac": 0, "dup_line_char_frac": 0, "dup_para_char_frac": 0}
    assert (
        repetition(page, **ones, top_n_grams=[[2, 1], [3, 1], [4, 1]], dup_n_grams=[[n, 1.0] for n in range(5, 11)])
        is None
    )


def test_ngram_counts_on_highly_repeated_words():
    """Vocabularies of 1-4 words: duplicates everywhere, jumps that skip first occurrences."""
    rng = random.Random(1)
    for trial in range(400):
        vocab = [f"w{i}" * rng.randint(1, 3) for i in range(rng.randint(1, 4))]
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 120))]
        for n in range(1, 11):
            if n > 1:
                assert dup_ngram_chars(words, n) == _naive_dup(words, n), (trial, n)
            assert top_ngram_chars(words, n) == _naive_top(words, n), (trial, n)


def test_document_words_follow_the_text():
    doc = Document("d", "a b  c")
    assert doc.words() == ["a", "b", "c"] and doc.words() is doc.words()
    doc.text = "x y"
    assert doc.words() == ["x", "y"]
