"""Reward functions for `llmctl rl`: `REWARDS` names the built-in ones; MODULE:FUNC imports your own.

A reward is f(prompts, completions, **columns) -> one float per completion (TRL's signature; None
counts as 0); `columns` are the prompt rows' other columns, one list each. `--reward` is
repeatable, `--reward-weight` weighs them in order (default 1 each); the total is the weighted sum.
A function that raises, or returns a value that is not a finite number, is a one-line error naming
the reward and the prompt (its row index in the prompts dataset). How to add one: README.md here.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llmctl.errors import UsageError
from llmctl.eval.tasks.exact_match import extract

_FORMAT = re.compile(r"####\s*-?\$?\d[\d,]*(?:\.\d+)?\s*$")


def exact_match_reward(
    prompts: Sequence[Any],
    completions: Sequence[str],
    answer: Sequence[Any] | None = None,
    reference: Sequence[Any] | None = None,
    response: Sequence[Any] | None = None,
    **_: Any,
) -> list[float]:
    """1 when the completion's final number equals the reference's, else 0. The extraction is `llmctl eval
    --task exact_match`'s (the number after the last '####', else the last number); the reference is the
    prompt row's `answer` (GSM8K layout), `reference` or `response` (SFT data) column."""
    refs = next((c for c in (answer, reference, response) if c is not None), None)
    if refs is None:
        raise UsageError(
            "reward exact_match needs an `answer` (or `reference`, or SFT's `response`) column in the prompts"
        )
    out = []
    for c, r in zip(completions, refs):
        want, got = extract(str(r)), extract(c)
        out.append(float(want is not None and got is not None and abs(want - got) < 1e-9))
    return out


def format_reward(prompts: Sequence[Any], completions: Sequence[str], **_: Any) -> list[float]:
    """1 when the completion ends with '#### <number>' (GSM8K's answer line), else 0."""
    return [float(bool(_FORMAT.search(c.strip()))) for c in completions]


def length_reward(prompts: Sequence[Any], completions: Sequence[str], **_: Any) -> list[float]:
    """Minus the completion's length in words: with `--reward-weight W`, a penalty of W a word (to
    counter a reward model's taste for long answers)."""
    return [-float(len(c.split())) for c in completions]


def rm_reward(prompts: Sequence[Any], completions: Sequence[str], scorer: Any, **_: Any) -> list[float]:
    """The reward model's score of (prompt, completion) (`--reward-model RUN`)."""
    return scorer.score(prompts, completions)


@dataclass(frozen=True)
class Reward:
    fn: Callable[..., Sequence[Any]]
    needs_scorer: bool = False  # called with scorer=the reward model of --reward-model


REWARDS: dict[str, Reward] = {
    "rm": Reward(rm_reward, needs_scorer=True),
    "exact_match": Reward(exact_match_reward),
    "format": Reward(format_reward),
    "length": Reward(length_reward),
}


def _choices() -> str:
    return f"{', '.join(REWARDS)} or MODULE:FUNC"


def _import(spec: str) -> Callable:
    mod, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"reward {spec!r}: cannot import it ({e})") from None


class Rewards:
    """The weighted sum of the named rewards (REWARDS names or MODULE:FUNC); `scorer` is the reward model
    (RewardScorer) for the rewards that need one."""

    def __init__(self, names: Sequence[str], weights: Sequence[float] | None = None, scorer: Any = None):
        if not names:
            raise UsageError(f"rl needs at least one --reward ({_choices()})")
        weights = list(weights) if weights else [1.0] * len(names)
        if len(weights) != len(names):
            raise UsageError(f"{len(names)} rewards but {len(weights)} --reward-weight values")
        self.names, self.weights, self.fns = list(names), weights, []
        for n in names:
            if n in REWARDS:
                r = REWARDS[n]
                if r.needs_scorer and scorer is None:
                    raise UsageError(f"reward {n} needs --reward-model RUN (a `llmctl reward` run or checkpoint)")
                self.fns.append(functools.partial(r.fn, scorer=scorer) if r.needs_scorer else r.fn)
            elif ":" in n:
                self.fns.append(_import(n))
            else:
                raise UsageError(f"unknown reward {n!r}; choose {_choices()}")

    def __call__(
        self, prompts: list[Any], completions: list[str], rows: list[dict[str, Any]], index: list[int]
    ) -> tuple[list[float], dict[str, list[float]]]:
        """(total per completion, {reward name: values}); `index` is each item's prompt row index."""
        cols = {k: [r.get(k) for r in rows] for k in (rows[0] if rows else {}) if k not in ("prompt", "messages")}
        per: dict[str, list[float]] = {}
        for name, fn in zip(self.names, self.fns):
            vals = self._call(name, fn, prompts, completions, cols, index)
            per[name] = vals
        total = [math.fsum(w * per[n][i] for n, w in zip(self.names, self.weights)) for i in range(len(completions))]
        return total, per

    @staticmethod
    def _call(
        name: str, fn: Callable, prompts: list[Any], completions: list[str], cols: dict[str, list], index: list[int]
    ) -> list[float]:
        try:
            vals = list(fn(prompts=prompts, completions=completions, **cols))
        except UsageError:
            raise
        except Exception:  # find the item: call it one at a time
            for i in range(len(completions)):
                try:
                    fn(
                        prompts=prompts[i : i + 1],
                        completions=completions[i : i + 1],
                        **{k: v[i : i + 1] for k, v in cols.items()},
                    )
                except Exception as e:
                    raise UsageError(f"reward {name} raised on prompt {index[i]}: {type(e).__name__}: {e}") from None
            raise
        if len(vals) != len(completions):
            raise UsageError(f"reward {name} returned {len(vals)} values for {len(completions)} completions")
        out = []
        for i, v in enumerate(vals):
            v = 0.0 if v is None else v
            try:
                v = float(v)
            except (TypeError, ValueError):
                v = math.nan
            if not math.isfinite(v):
                raise UsageError(f"reward {name} gave {vals[i]!r} on prompt {index[i]}: not a finite number")
            out.append(v)
        return out
