"""C4 rules: each rule keeps a good page and drops (or cuts) a crafted bad one, with its reason.

The story sentences are real text from TinyStories (Eldan & Li 2023), taken from
/work/shared/data/tinystories/tinystories_valid_head.txt.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from llmctl.data.document import Document
from llmctl.data.steps.c4 import (
    BadWords,
    C4Config,
    C4Filter,
    badwords_regex,
    count_sentences,
    default_badwords,
    load_badwords,
)

# Real TinyStories lines (each ends in terminal punctuation and has >= 5 words).
STORY = [
    "Once upon a time, in a big forest, there lived a rhinoceros named Roxy.",
    "Roxy tried to climb the icy hill, but it was very slippery.",
    'Billy saw that Roxy was sad and asked, "Why are you sad, Roxy?"',
    "They drank the water and felt very happy.",
]
GOOD = "\n".join(STORY)


def run(text: str, **cfg) -> tuple[str | None, Document, Counter[str]]:
    doc = Document(id="d", text=text)
    stats: Counter[str] = Counter()
    reason = C4Filter(C4Config(**cfg))(doc, stats)
    return reason, doc, stats


def test_good_page_is_kept_unchanged():
    reason, doc, stats = run(GOOD)
    assert reason is None
    assert doc.text == GOOD
    assert not stats


def test_lines_are_stripped_and_joined_with_newline():
    reason, doc, stats = run("  " + "\n\n".join(STORY) + "  \n")
    assert reason is None
    assert doc.text == GOOD
    assert not stats  # blank lines are not counted as removed lines


def test_too_long_word_removes_line():
    bad = "The secret word was " + "a" * 1001 + " and nobody knew it."
    reason, doc, stats = run(GOOD + "\n" + bad)
    assert reason is None and doc.text == GOOD
    assert stats["c4.line_removed.too_long_word"] == 1
    ok = "The secret word was " + "a" * 1000 + " and nobody knew it."
    reason, doc, stats = run(GOOD + "\n" + ok)
    assert reason is None and doc.text.endswith(ok)
    assert not stats


def test_citations_are_removed_and_counted():
    line = "Roxy loved to climb.[1] She climbed trees, rocks, and hills.[citation needed] Trees[Edit] grow[] tall."
    reason, doc, stats = run(GOOD + "\n" + line)
    assert reason is None
    assert doc.text.splitlines()[-1] == "Roxy loved to climb. She climbed trees, rocks, and hills. Trees grow tall."
    assert stats["c4.citations_removed"] == 4
    # A bracketed word that is not a citation marker stays.
    reason, doc, stats = run(GOOD + "\nThe [small] daisy was very happy today.")
    assert reason is None and "[small]" in doc.text and not stats


def test_citation_at_end_of_line_does_not_hide_missing_punctuation():
    # Citation removed first, then the line must still end in punctuation: this one does.
    reason, doc, stats = run(GOOD + "\nMax liked to play in the yard.[2]")
    assert doc.text.splitlines()[-1] == "Max liked to play in the yard."
    assert stats["c4.citations_removed"] == 1 and stats["c4.line_removed.no_terminal_punct"] == 0


@pytest.mark.parametrize(
    "line",
    [
        "Home | About us | Contact | Shop online now",
        "She wanted to climb the icy hill so much",
        "And then the little bird flew away...",
        "Posted by admin on the blog today:",
    ],
)
def test_no_terminal_punct_removes_line(line):
    reason, doc, stats = run(GOOD + "\n" + line)
    assert reason is None and doc.text == GOOD
    assert stats["c4.line_removed.no_terminal_punct"] == 1


@pytest.mark.parametrize(
    "line",
    [
        "Max and Daisy became friends!",
        "Why are you so sad, little Roxy?",
        'Sue said, "Mom, can I light the candle."',
        "Sue said, “Mom, can I light the candle.”",
        "Sue said, ‘Mom, can I light the candle.’",
        "Sue said, 'Mom, can I light the candle.'",
    ],
)
def test_terminal_punctuation_and_closing_quotes_are_kept(line):
    reason, doc, stats = run(GOOD + "\n" + line)
    assert reason is None and doc.text.splitlines()[-1] == line
    assert not stats


def test_too_few_words_removes_line():
    reason, doc, stats = run(GOOD + "\nMax liked the yard.")  # 4 words
    assert reason is None and doc.text == GOOD
    assert stats["c4.line_removed.too_few_words"] == 1
    reason, doc, stats = run(GOOD + "\nMax liked the big yard.")  # 5 words
    assert reason is None and doc.text.endswith("Max liked the big yard.")


def test_javascript_removes_line():
    line = "Please enable JavaScript in your browser to see the comments."
    reason, doc, stats = run(GOOD + "\n" + line)
    assert reason is None and doc.text == GOOD
    assert stats["c4.line_removed.javascript"] == 1


@pytest.mark.parametrize(
    "phrase", ["terms of use", "Privacy Policy", "cookie policy", "uses cookies", "use of cookies", "use cookies"]
)
def test_policy_removes_line(phrase):
    line = f"Please read our {phrase} before you go on reading."
    reason, doc, stats = run(GOOD + "\n" + line)
    assert reason is None and doc.text == GOOD
    assert stats["c4.line_removed.policy"] == 1


def test_lorem_ipsum_drops_page():
    reason, doc, _ = run(GOOD + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.")
    assert reason == "c4.lorem_ipsum"
    assert doc.text.startswith(GOOD)  # a dropped document keeps its original text


def test_curly_bracket_drops_page():
    reason, _, _ = run(GOOD + "\nThe function returns {a: 1} when it is called.")
    assert reason == "c4.curly_bracket"


def test_page_checks_literal_vs_kept_lines():
    # "{" and "lorem ipsum" only in lines the line rules remove (no punctuation / too short).
    for bad, reason in [("var x = {a: 1}", "c4.curly_bracket"), ("Lorem ipsum", "c4.lorem_ipsum")]:
        text = GOOD + "\n" + bad
        assert run(text)[0] == reason  # the paper: anywhere in the page
        r, doc, stats = run(text, page_checks_on_kept_lines=True)  # TFDS / datatrove order
        assert r is None and doc.text == GOOD
        assert stats["c4.line_removed.no_terminal_punct"] + stats["c4.line_removed.too_few_words"] == 1
    # In the TFDS order the javascript rule comes before the curly bracket rule.
    js = "Please enable javascript, then call init({debug: true}) to start."
    assert run(GOOD + "\n" + js, page_checks_on_kept_lines=True)[0] is None
    assert run(GOOD + "\nThe function returns {a: 1} when called.", page_checks_on_kept_lines=True)[0] == (
        "c4.curly_bracket"
    )


def test_too_few_sentences_drops_page():
    two = "Once upon a time, there was a kind farmer.\nHe had a big cow and a small dog."
    assert run(two)[0] == "c4.too_few_sentences"
    three = "Once upon a time, there was a kind farmer. He had a big cow.\nThe cow was sad and did not eat."
    assert run(three)[0] is None
    # Sentences are counted in the kept lines only.
    assert run(two + "\nHome. About. Contact. Shop")[0] == "c4.too_few_sentences"


def test_count_sentences():
    assert count_sentences("Roxy was sad. She wanted to climb! Why? Yes.") == 4
    assert count_sentences('Billy asked, "Why are you sad?" Roxy cried.') == 2
    assert count_sentences("The candle was her mom's favorite.") == 1
    assert count_sentences("It cost 3.50 dollars at the shop.") == 1
    assert count_sentences("The end…") == 1


def test_bad_words_drop_page():
    assert run(GOOD + "\nThe farmer called the fox a bastard and ran away.")[0] == "c4.bad_words"
    assert run(GOOD + "\nThey watched the HARD CORE show on the television.")[0] == "c4.bad_words"
    # Substrings of longer words do not count (as in TFDS): "class", "assist", "Sussex".
    ok = GOOD + "\nThe class went to Sussex to assist the old farmer."
    assert run(ok)[0] is None


def test_bad_words_literal_vs_kept_lines():
    text = GOOD + "\nporn"  # in a line the line rules remove
    assert run(text)[0] == "c4.bad_words"
    reason, doc, _ = run(text, page_checks_on_kept_lines=True)
    assert reason is None and doc.text == GOOD


@pytest.mark.parametrize(
    "switch,text",
    [
        ("filter_too_long_word", GOOD + "\nThe word " + "b" * 1001 + " was long."),
        ("remove_citations", GOOD + "\nRoxy loved[1] to climb the tall hill."),
        ("filter_no_terminal_punct", GOOD + "\nShe wanted to climb the icy hill so much"),
        ("filter_too_few_words", GOOD + "\nMax liked the yard."),
        ("filter_javascript", GOOD + "\nPlease enable JavaScript to see the comments."),
        ("filter_policy", GOOD + "\nPlease read our privacy policy before you go."),
        ("filter_lorem_ipsum", GOOD + "\nLorem ipsum dolor sit amet, consectetur elit."),
        ("filter_curly_bracket", GOOD + "\nThe function returns {a: 1} when called."),
        ("filter_too_few_sentences", "Once upon a time, there was a kind farmer."),
        ("filter_bad_words", GOOD + "\nThe farmer called the fox a bastard and left."),
    ],
)
def test_each_rule_can_be_switched_off(switch, text):
    reason, doc, stats = run(text)
    assert reason is not None or doc.text != text.strip()
    reason, doc, stats = run(text, **{switch: False})
    assert reason is None and doc.text == text.strip()
    assert not stats


def test_disabled_step_does_nothing():
    reason, doc, stats = run("Lorem ipsum {", enabled=False)
    assert reason is None and doc.text == "Lorem ipsum {" and not stats


def test_badwords_list_loads():
    words = load_badwords()
    assert len(words) == 403 and "2 girls 1 cup" in words and "" not in words
    bw = default_badwords()
    assert len(bw.single) + len(bw.multi) == len(words)


def _regex_hit(regex: re.Pattern[str], text: str) -> bool:
    return regex.search(text.lower()) is not None


def test_badwords_fast_matcher_equals_tfds_regex():
    words = load_badwords()
    regex = badwords_regex(words)
    fast = default_badwords()
    rng = random.Random(0)
    story_words = " ".join(STORY).split()
    affixes = ["", " ", ".", "-", "_", "s", "x", "'", "\n", "2", "é", "!", "(", ")", "&"]
    texts = [GOOD, "", " ", "ass", "ASS.", "class", "s&m", "s & m", "g-spot", "g-spots", "g_spot", "🖕", "a🖕b"]
    for w in words:
        for _ in range(4):
            pre = rng.choice(affixes)
            post = rng.choice(affixes)
            variant = w.upper() if rng.random() < 0.2 else w
            if rng.random() < 0.2:
                variant = variant.replace(" ", "  ")
            ctx = rng.sample(story_words, 6)
            texts.append(" ".join(ctx[:3]) + " " + pre + variant + post + " " + " ".join(ctx[3:]))
            texts.append(pre + variant + post)
    positives = 0
    for t in texts:
        expected = _regex_hit(regex, t)
        assert (fast.find(t.lower()) is not None) == expected, t
        positives += expected
    assert 0.3 * len(texts) < positives < len(texts)  # both outcomes are well exercised


def test_badwords_fast_matcher_on_real_text():
    from pathlib import Path

    path = Path(__file__).parents[2] / "fixtures" / "tinystories_valid_head_300k.txt"  # see data/README.md
    regex = badwords_regex(load_badwords())
    fast = BadWords(load_badwords())
    for para in path.read_text(encoding="utf-8").split("\n\n")[:2000]:
        assert (fast.find(para.lower()) is not None) == _regex_hit(regex, para)


def test_c4_on_a_long_page():
    """A ~110k-word page runs through every rule (speed is measured by benchmarks/filter.py, not here)."""
    page = "\n".join((STORY * 3000)[:10000])  # ~ 110k words, 10k lines
    reason, doc, _ = run(page)
    assert reason is None
