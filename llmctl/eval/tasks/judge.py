"""`judge`: LLM-as-judge pairwise win rate against a baseline, with AlpacaEval 2's length control.

MODEL and `baseline` answer the same prompts (greedy by default, the chat template of each). A
judge compares each pair twice, MODEL's answer as A then as B, so position bias cancels. The
judge is an llmctl-loadable model (`judge`, in process: the verdict is whichever of " A" / " B"
it gives the higher log-likelihood after the judge prompt, so it is never unparseable) or an
OpenAI-compatible endpoint (`judge_url`, `judge_model`, the key from the `api_key_env` variable;
the verdict is the word A, B or tie on the reply's last line). The judge prompt is a text file with
`{instruction}`, `{output_a}` and `{output_b}` (`prompt_file`; the bundled `judge_prompt.txt`).

Per pair, each order's verdict becomes an AlpacaEval preference (1 = baseline wins, 2 = MODEL
wins, 1.5 = tie), and the pair's preference is the mean over the orders that gave a verdict. An
order whose reply cannot be parsed (or whose request failed after the judge answered once) is a
counted skip (`judge_unparsed`); a pair with no verdict in either order is left out (`n_skipped`).
Metrics: `win_rate` (mean preference - 1, AlpacaEval's win rate / 100) with its stderr,
`lc_win_rate` (`llmctl.eval.lc_winrate` on the pairs' preferences and character lengths, / 100),
`judge_consistency` (pairs judged in both orders whose winners agree, a tie agreeing with a tie),
`mean_len_model`, `mean_len_baseline` (characters), `n_skipped`, `judge_unparsed`.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from llmctl.errors import UsageError
from llmctl.eval.base import Samples, chat_answers, file_lineage, mean_stderr, read_prompts
from llmctl.eval.lc_winrate import lc_winrate
from llmctl.eval.lm import load_lm

DEFAULT_PROMPT = Path(__file__).resolve().parents[1] / "judge_prompt.txt"
_VERDICT = re.compile(r"\b(A|B|tie)\b", re.IGNORECASE)

SAMPLES_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("output_model", pa.string()),
        ("output_baseline", pa.string()),
        ("reply_model_first", pa.string()),  # the judge's raw reply, MODEL's answer as A
        ("reply_model_second", pa.string()),  # MODEL's answer as B
        ("preference_model_first", pa.float64()),  # 1 baseline, 2 MODEL, 1.5 tie; null = unparsed
        ("preference_model_second", pa.float64()),
        ("preference", pa.float64()),  # the pair's: mean over the orders with a verdict
        ("len_model", pa.int64()),
        ("len_baseline", pa.int64()),
    ]
)


@dataclass
class JudgeConfig:
    prompts: str = ""  # --prompts: JSONL with an instruction (or prompt/question) per row
    baseline: str = ""  # --baseline: the model MODEL is compared with
    judge: str = ""  # --judge: an llmctl checkpoint or Hugging Face dir judging in process
    judge_url: str = ""  # --judge-url: an OpenAI-compatible server (its /v1/chat/completions)
    judge_model: str = ""  # --judge-model: the model name sent to judge_url
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding judge_url's key
    prompt_file: str = ""  # --judge-prompt: {instruction}, {output_a}, {output_b} (default: the bundled one)
    limit: int = 50
    max_new_tokens: int = 128  # answer length of MODEL and baseline
    judge_max_tokens: int = 16  # reply length of an HTTP judge
    temperature: float = 0.0
    seed: int = 0
    timeout_s: float = 30.0


def _template(cfg: JudgeConfig) -> str:
    p = Path(cfg.prompt_file) if cfg.prompt_file else DEFAULT_PROMPT
    if not p.is_file():
        raise UsageError(f"--judge-prompt {p}: no such file")
    text = p.read_text(encoding="utf-8")
    missing = [k for k in ("{instruction}", "{output_a}", "{output_b}") if k not in text]
    if missing:
        raise UsageError(f"--judge-prompt {p}: needs the placeholders {', '.join(missing)}")
    return text


def _render(template: str, instruction: str, a: str, b: str) -> str:
    # str.replace, not str.format: answers and prompts may hold braces
    return template.replace("{instruction}", instruction).replace("{output_a}", a).replace("{output_b}", b)


def _http(url: str, path: str, body: dict | None, key: str, timeout: float) -> dict:
    req = urllib.request.Request(
        url.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode("utf-8"))


def check(cfg: JudgeConfig) -> None:
    """One judge, a readable prompt file, and (for judge_url) a server that answers, before the model loads."""
    if bool(cfg.judge) == bool(cfg.judge_url):
        raise UsageError("task judge needs exactly one of --judge MODEL and --judge-url URL")
    _template(cfg)
    if cfg.judge and not Path(cfg.judge).exists():
        raise UsageError(f"--judge {cfg.judge}: no such model directory")
    if cfg.judge_url:
        try:
            _http(cfg.judge_url, "/v1/models", None, os.environ.get(cfg.api_key_env, ""), cfg.timeout_s)
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise UsageError(f"--judge-url {cfg.judge_url}: the judge does not answer ({reason})") from None


def parse_verdict(reply: str) -> str | None:
    """'A', 'B' or 'tie' from the reply's last non-empty line; None when it names none (or several)."""
    lines = [x for x in reply.strip().splitlines() if x.strip()]
    if not lines:
        return None
    found = {m.group(1).upper() if m.group(1).lower() != "tie" else "tie" for m in _VERDICT.finditer(lines[-1])}
    return found.pop() if len(found) == 1 else None


def _answers(lm: Any, prompts: list[str], cfg: JudgeConfig, batch_size: int, progress: Any) -> list[str]:
    return chat_answers(
        lm,
        prompts,
        task="the judge task",
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
        batch_size=batch_size,
        progress=progress,
    )


class _LocalJudge:
    """Verdict by log-likelihood of " A" vs " B" after the judge prompt in the judge's chat format."""

    def __init__(self, path: str, device: str, batch_size: int):
        self.lm, self.bs = load_lm(path, device), batch_size
        if self.lm.codec.chat is None:
            raise UsageError(f"--judge {path}: its tokenizer has no chat template")

    def __call__(self, texts: list[str]) -> list[str]:
        enc = self.lm.codec.encode
        reqs = []
        for t in texts:
            ctx = self.lm.codec.chat([{"role": "user", "content": t}])
            reqs += [(ctx, enc("A")), (ctx, enc("B"))]
        ll = self.lm.loglikelihood(reqs, self.bs)
        out = []
        for i in range(len(texts)):
            a, b = ll[2 * i][0], ll[2 * i + 1][0]
            out.append("A" if a > b else "B" if b > a else "tie")
        return out

    def lineage(self) -> dict[str, Any]:
        return {**self.lm.lineage(), "stage": "judge"}


class _HttpJudge:
    def __init__(self, cfg: JudgeConfig):
        self.cfg, self.key = cfg, os.environ.get(cfg.api_key_env, "")

    def __call__(self, texts: list[str]) -> list[str]:
        out = []
        for t in texts:
            body = {
                "model": self.cfg.judge_model or "judge",
                "messages": [{"role": "user", "content": t}],
                "temperature": 0,
                "max_tokens": self.cfg.judge_max_tokens,
            }
            try:
                r = _http(self.cfg.judge_url, "/v1/chat/completions", body, self.key, self.cfg.timeout_s)
                out.append(str(r["choices"][0]["message"]["content"] or ""))
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError):
                out.append("")  # a failed request: an unparsed verdict, counted
        return out

    def lineage(self) -> dict[str, Any]:
        return {"path": self.cfg.judge_url, "stage": "judge-url", "fingerprint": self.cfg.judge_model}


def _pref(verdict: str | None, model_is_a: bool) -> float | None:
    if verdict is None:
        return None
    if verdict == "tie":
        return 1.5
    return 2.0 if (verdict == "A") == model_is_a else 1.0


def run(
    lm: Any, cfg: JudgeConfig, batch_size: int, progress: Any = None, *, model: str = "", device: str = "cpu"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Samples]:
    check(cfg)
    if not cfg.baseline:
        raise UsageError("task judge needs --baseline MODEL")
    template = _template(cfg)
    prompts, lineage = read_prompts(cfg.prompts, cfg.limit)
    base = load_lm(cfg.baseline, device)
    judge = _LocalJudge(cfg.judge, device, batch_size) if cfg.judge else _HttpJudge(cfg)
    if progress:
        progress.start("judge", 2 * len(prompts))
    ours = _answers(lm, prompts, cfg, batch_size, progress)
    theirs = _answers(base, prompts, cfg, batch_size, progress)
    first = judge([_render(template, p, a, b) for p, a, b in zip(prompts, ours, theirs)])
    second = judge([_render(template, p, b, a) for p, a, b in zip(prompts, ours, theirs)])
    samples, prefs, lm_len, lb_len, agree = [], [], [], [], []
    unparsed = 0
    for p, a, b, r1, r2 in zip(prompts, ours, theirs, first, second):
        p1, p2 = _pref(parse_verdict(r1), True), _pref(parse_verdict(r2), False)
        unparsed += (p1 is None) + (p2 is None)
        got = [x for x in (p1, p2) if x is not None]
        pref = sum(got) / len(got) if got else None
        if p1 is not None and p2 is not None:
            agree.append(float(p1 == p2))
        if pref is not None:
            prefs.append(pref)
            lm_len.append(len(a))
            lb_len.append(len(b))
        samples.append(
            {
                "prompt": p,
                "output_model": a,
                "output_baseline": b,
                "reply_model_first": r1,
                "reply_model_second": r2,
                "preference_model_first": p1,
                "preference_model_second": p2,
                "preference": pref,
                "len_model": len(a),
                "len_baseline": len(b),
            }
        )
    n, n_all = len(prefs), len(prompts)
    row = lambda metric, value, err, k: {"task": "judge", "metric": metric, "value": value, "stderr": err, "n": k}  # noqa: E731
    rows = [row("n_skipped", float(n_all - n), None, n_all), row("judge_unparsed", float(unparsed), None, 2 * n_all)]
    if n:
        wins = [x - 1.0 for x in prefs]
        rows += [
            row("win_rate", sum(wins) / n, mean_stderr(wins), n),
            row("mean_len_model", sum(lm_len) / n, mean_stderr([float(x) for x in lm_len]), n),
            row("mean_len_baseline", sum(lb_len) / n, mean_stderr([float(x) for x in lb_len]), n),
        ]
        if n >= 5:
            lc = lc_winrate(prefs, lm_len, lb_len)
            rows.append(row("lc_win_rate", lc["length_controlled_winrate"] / 100, lc["lc_standard_error"] / 100, n))
    if agree:
        rows.append(row("judge_consistency", sum(agree) / len(agree), mean_stderr(agree), len(agree)))
    ins = [lineage, base.lineage(), judge.lineage()]
    ins.append(
        file_lineage(cfg.prompt_file) if cfg.prompt_file else {**file_lineage(DEFAULT_PROMPT), "stage": "bundled"}
    )
    return rows, ins, Samples(SAMPLES_SCHEMA, samples)
