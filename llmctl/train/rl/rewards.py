"""Reward functions for `llmctl rl`: the reward model, GSM8K exact match, a format reward, your own.

A reward is named in `--reward` (repeatable; weights in `--reward-weight`, in the same order,
default 1 each; the total is the weighted sum, as TRL's `reward_weights`):

  rm            the reward model's score of (prompt, completion) (`--reward-model RUN`)
  exact_match   1 when the completion's final number equals the reference's, else 0; the
                extraction is `llmctl eval --task exact_match`'s (`llmctl.eval.tasks.exact_match.extract`:
                the number after the last '####', else the last number); the reference is the
                prompt row's `answer` (GSM8K layout), `reference` or `response` (SFT data) column
  format        1 when the completion ends with '#### <number>' (GSM8K's answer line), else 0
  MODULE:FUNC   a Python function, TRL's signature: f(prompts, completions, **columns) -> list of
                floats (None = no reward from it for that item, counted as 0); `columns` are the
                prompt rows' other columns, one list each

A function that raises is a one-line error naming the reward and the prompt (its row index in
the prompts dataset); a value that is not a finite number is one too.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from llmctl.errors import UsageError
from llmctl.eval.tasks.exact_match import extract

BUILTIN = ("rm", "exact_match", "format")
_FORMAT = re.compile(r"####\s*-?\$?\d[\d,]*(?:\.\d+)?\s*$")


def exact_match_reward(
    prompts: Sequence[Any],
    completions: Sequence[str],
    answer: Sequence[Any] | None = None,
    reference: Sequence[Any] | None = None,
    response: Sequence[Any] | None = None,
    **_: Any,
) -> list[float]:
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
    return [float(bool(_FORMAT.search(c.strip()))) for c in completions]


def _import(spec: str) -> Callable:
    mod, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"reward {spec!r}: cannot import it ({e})") from None


class Rewards:
    """The weighted sum of the named rewards; `scorer` is the reward model (RewardScorer) for `rm`."""

    def __init__(self, names: Sequence[str], weights: Sequence[float] | None = None, scorer: Any = None):
        if not names:
            raise UsageError("rl needs at least one --reward (rm, exact_match, format or MODULE:FUNC)")
        weights = list(weights) if weights else [1.0] * len(names)
        if len(weights) != len(names):
            raise UsageError(f"{len(names)} rewards but {len(weights)} --reward-weight values")
        self.names, self.weights, self.fns = list(names), weights, []
        for n in names:
            if n == "rm":
                if scorer is None:
                    raise UsageError("reward rm needs --reward-model RUN (a `llmctl reward` run or checkpoint)")
                self.fns.append(lambda prompts, completions, **_: scorer.score(prompts, completions))
            elif n == "exact_match":
                self.fns.append(exact_match_reward)
            elif n == "format":
                self.fns.append(format_reward)
            elif ":" in n:
                self.fns.append(_import(n))
            else:
                raise UsageError(f"unknown reward {n!r}; choose rm, exact_match, format or MODULE:FUNC")

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
