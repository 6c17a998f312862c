"""Tools a policy calls mid-completion in `llmctl rl --tool`: `TOOLS` names the built-in ones; MODULE:FUNC imports yours.

The call format is the tokenizer's (`call_format`):
- llmctl's tokenizer (trained with the tool tokens, llmctl.tokenizer.base): the model writes
  `<|tool_call|>NAME ARG<|/tool_call|>` (NAME optional with one tool); at `<|/tool_call|>`
  generation pauses for that sequence, the tool runs on ARG, and `<|tool_output|>OUT<|/tool_output|>`
  is fed to it as its next tokens; generation resumes.
- an llmctl tokenizer trained before the tool tokens existed: the same with GSM8K's calculator
  annotation as text, `<<ARG=` then `OUT>>` is fed (`<<48/2=` + `24>>`).
- an imported Hugging Face model: its chat template's `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
  (Qwen2.5/Qwen3/Hermes); what the template writes between the call and the next assistant reply,
  around the output, is fed (`HFTokenizer.tool_format`); a template without it is a one-line error.
These are exactly the layouts SFT trains from `messages` with `tool_calls` and `tool` turns.
Tool tokens are part of the completion the reward reads, but they are excluded from the loss and
from the KL (`generate_with_tools` returns which tokens the model wrote).

A tool is f(arg: str) -> str. The built-in `calculator` evaluates arithmetic only, by walking the
parsed expression's tree (numbers, + - * / // % **, parentheses); it never runs model text as
Python. A MODULE:FUNC tool runs in a fresh Python subprocess for each call, with a time limit and
an output limit (the subprocess cannot write more than the limit). A call that times out, raises
or exceeds the output limit, and a call beyond `max_calls` in one completion, is cut off: the
model gets `error: REASON` (or, past max_calls, the completion ends there), the reason is
counted, and the rollout goes on.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from llmctl.errors import UsageError
from llmctl.tokenizer.base import (
    TEXT_CALL,
    TEXT_CALL_END,
    TEXT_OUTPUT_END,
    TOOL_CALL,
    TOOL_CALL_END,
    TOOL_TOKENS,
    call_arg,
    has_tool_tokens,
    tool_output_ids,
)

CALL_OPEN, CALL_END, CALL_CLOSE = TEXT_CALL, TEXT_CALL_END, TEXT_OUTPUT_END
CUTOFF_REASONS = ("timeout", "error", "output_limit", "max_calls")

_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPR, _MAX_MAG = 200, 1e100


class ToolError(Exception):
    """A tool's refusal of its argument (the model gets `error: <message>`)."""


def _walk(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _walk(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        a, b = _walk(node.left), _walk(node.right)
        if isinstance(node.op, ast.Pow) and (abs(b) > 64 or abs(a) > 1e6):
            raise ToolError("power too large")
        try:
            v = _BIN[type(node.op)](a, b)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        if isinstance(v, complex) or abs(v) > _MAX_MAG:
            raise ToolError("result out of range")
        return v
    raise ToolError(f"not arithmetic: {type(node).__name__}")


def calculator(arg: str) -> str:
    """The value of an arithmetic expression (numbers, + - * / // % **, parentheses; thousands commas
    allowed): an integer when whole, else up to 10 significant digits."""
    expr = arg.replace(",", "").strip()
    if not expr or len(expr) > _MAX_EXPR:
        raise ToolError("empty or too long")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError):
        raise ToolError("not arithmetic") from None
    v = _walk(tree)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ToolError("result out of range")
        if v.is_integer():
            return str(int(v))
        return f"{v:.10g}"
    return str(v)


# The built-in tools of `llmctl rl --tool` (run in-process: they only parse, never execute, their argument)
TOOLS: dict[str, Callable[[str], str]] = {"calculator": calculator}

_RUNNER = (
    "import importlib, sys\n"
    "mod, fn = sys.argv[1].split(':', 1)\n"
    "f = getattr(importlib.import_module(mod), fn)\n"
    "sys.stdout.write(str(f(sys.stdin.read())))\n"
)


@dataclass
class SubprocessTool:
    """MODULE:FUNC called in a fresh Python subprocess per call (cwd and sys.path of this process)."""

    spec: str
    timeout: float
    max_output: int

    def __call__(self, arg: str) -> str:
        limit = self.max_output + 1

        def _limits() -> None:  # the child cannot write more than `limit` bytes to a file
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.run(
                    [sys.executable, "-c", _RUNNER, self.spec],
                    input=arg.encode(),
                    stdout=out,
                    stderr=err,
                    timeout=self.timeout,
                    preexec_fn=_limits,
                    env=env,
                )
            except subprocess.TimeoutExpired:
                raise ToolCutoff("timeout") from None
            out.seek(0)
            data = out.read(limit)
            if len(data) > self.max_output or proc.returncode == -signal.SIGXFSZ:
                raise ToolCutoff("output_limit")
            if proc.returncode != 0:
                err.seek(0)
                tail = err.read(4096).decode(errors="replace").strip().splitlines()
                raise ToolCutoff("error", tail[-1] if tail else f"exit status {proc.returncode}")
        return data.decode(errors="replace")


class ToolCutoff(Exception):
    """A call cut off for `reason` (one of CUTOFF_REASONS)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


@dataclass
class ToolBox:
    """The tools of a run, their limits, and the counts of calls and cut-offs (`stats()`)."""

    names: Sequence[str]
    max_calls: int = 4
    timeout: float = 5.0
    max_output: int = 1024
    wait_steps: int = 8
    tools: dict[str, Callable[[str], str]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.names:
            raise UsageError("no --tool given")
        if self.max_calls < 1 or self.timeout <= 0 or self.max_output < 1 or self.wait_steps < 0:
            raise UsageError(
                "max_tool_calls, tool_timeout and tool_max_output must be positive, tool_wait_steps at least 0"
            )
        for n in self.names:
            if n in TOOLS:
                self.tools[n] = TOOLS[n]
            elif ":" in n:
                self.tools[n] = SubprocessTool(n, self.timeout, self.max_output)
            else:
                raise UsageError(f"unknown tool {n!r}; choose {', '.join(TOOLS)} or MODULE:FUNC")

    def resolve(self, body: str) -> tuple[str, str]:
        """(tool name, argument) of a call body `[NAME ]ARG` (NAME a tool's name, or the FUNC of a
        MODULE:FUNC; without it, the first tool)."""
        head, _, rest = body.partition(" ")
        short = {n.rpartition(":")[2]: n for n in self.tools}
        if head in self.tools or head in short:
            return (head if head in self.tools else short[head]), rest
        return next(iter(self.tools)), body

    def runs_apart(self, body: str) -> bool:
        """Whether the call runs in a subprocess (a MODULE:FUNC tool): worth running while the batch goes on."""
        return isinstance(self.tools[self.resolve(body)[0]], SubprocessTool)

    def _count(self, key: str) -> None:
        with self.lock:  # calls may run in threads
            self.counts[key] += 1

    def call(self, body: str) -> str:
        """The text the model gets for a call body (its output, or `error: ...`); counts the call."""
        name, body = self.resolve(body)
        self._count("calls")
        try:
            out = self.tools[name](body)
            out = str(out)
            if len(out.encode()) > self.max_output:
                raise ToolCutoff("output_limit")
            return out
        except ToolCutoff as e:
            self._count(e.reason)
            return f"error: {e}"
        except ToolError as e:
            self._count("error")
            return f"error: {e}"
        except Exception as e:  # an in-process tool that raised: cut off, the rollout goes on
            self._count("error")
            return f"error: {type(e).__name__}"

    def stats(self) -> dict[str, float]:
        """tools/calls, tools/cutoff/REASON (since the last call), then resets the counts."""
        st = {"tools/calls": float(self.counts["calls"])}
        st.update({f"tools/cutoff/{r}": float(self.counts[r]) for r in CUTOFF_REASONS})
        self.counts.clear()
        return st


class TokenCalls:
    """llmctl's tool tokens: `<|tool_call|>BODY<|/tool_call|>`, fed `<|tool_output|>OUT<|/tool_output|>`."""

    def __init__(self, tok: Any):
        self.tok, self.open, self.close = tok, tok.special_ids[TOOL_CALL], tok.special_ids[TOOL_CALL_END]

    def body(self, ids: list[int]) -> str | None:
        if ids[-1] != self.close:
            return None
        j = next((k for k in range(len(ids) - 2, -1, -1) if ids[k] in (self.open, self.close)), -1)
        if j < 0 or ids[j] != self.open:
            return None
        return self.tok.decode(ids[j + 1 : -1])

    def feed(self, output: str) -> list[int]:
        return tool_output_ids(self.tok, output)


class TextCalls:
    """A tokenizer without tool tokens: `<<BODY=` written as text, fed `OUT>>`."""

    def __init__(self, tok: Any):
        self.tok = tok

    def body(self, ids: list[int]) -> str | None:
        if not self.tok.decode(ids[-1:]).endswith(CALL_END):  # decode the row's text only at a "="
            return None
        text = self.tok.decode(ids)
        if not text.endswith(CALL_END):
            return None
        i = text.rfind(CALL_OPEN)
        if i < 0 or CALL_CLOSE in text[i:]:
            return None
        return text[i + len(CALL_OPEN) : -len(CALL_END)]

    def feed(self, output: str) -> list[int]:
        return tool_output_ids(self.tok, output)


class TemplateCalls:
    """An imported model's chat-template format: `<tool_call>{"name": N, "arguments": A}</tool_call>`,
    fed the template's text between that call and the next assistant reply around the output."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.close_text, self.pre, self.post = tok.tool_format()
        self.close = tok.encode(self.close_text)
        self.open_text = self.close_text.replace("</", "<", 1)

    def body(self, ids: list[int]) -> str | None:
        if ids[-len(self.close) :] != self.close:
            return None
        text = self.tok.decode(ids, skip_special=False)
        i = text.rfind(self.open_text)
        if i < 0:
            return None
        raw = text[i + len(self.open_text) : text.rfind(self.close_text)].strip()
        try:
            call = json.loads(raw)
            return f"{call['name']} {call_arg(call.get('arguments', {}))}"
        except (json.JSONDecodeError, KeyError, TypeError):
            return f"{_MALFORMED} {raw}"

    def feed(self, output: str) -> list[int]:
        return self.tok.encode(self.pre) + self.tok.encode(output) + self.tok.encode(self.post)


_MALFORMED = "\x00malformed"  # a body no tool has the name of: the call is answered `error: ...`


def call_format(tok: Any) -> TokenCalls | TextCalls | TemplateCalls:
    """The tool-call format of `tok` (see the module docstring)."""
    if hasattr(tok, "tool_format"):
        return TemplateCalls(tok)
    return TokenCalls(tok) if has_tool_tokens(tok) else TextCalls(tok)


def completion_text(tok: Any, ids: Sequence[int]) -> str:
    """A completion's text with its tool-call markers written out (what rewards and samples read)."""
    if not has_tool_tokens(tok) or hasattr(tok, "tool_format"):
        return tok.decode(ids, skip_special=not hasattr(tok, "tool_format"))
    marks = {tok.special_ids[t]: t for t in TOOL_TOKENS}
    out, run = [], []
    for i in ids:
        if i in marks:
            out.append(tok.decode(run) + marks[i])
            run = []
        else:
            run.append(i)
    return "".join(out) + tok.decode(run)


def generate_with_tools(
    generate: Callable[..., Any], prompts: Sequence[Sequence[int]], max_new_tokens: int, tok: Any, box: ToolBox
) -> tuple[Any, list[list[bool]]]:
    """(generate_batch's result, per completion id whether the model wrote it) for completions that may
    call `box`'s tools. `generate(prompts, max_new_tokens, force_fn=...)` is generate_batch's
    contract: when a row's ids end with a call (`call_format(tok)`), the tool runs and its output is
    fed to that row as its next tokens while the other rows go on sampling. A built-in tool (it only
    parses) answers at once; a MODULE:FUNC tool runs in a thread while that row is parked for
    `box.wait_steps` steps and the other rows go on sampling (the engine waits after them only if
    the tool is still running; generate_batch's `wait_steps`). Tool tokens count toward
    max_new_tokens (and the model's context); a row's call beyond `box.max_calls` ends that
    completion there (cut off, counted as max_calls, not ended)."""
    fmt = call_format(tok)
    calls = [0] * len(prompts)
    pool = ThreadPoolExecutor(max_workers=min(8, len(prompts))) if box.wait_steps else None

    def answer(body: str) -> list[int]:
        return fmt.feed(box.call(body))

    def force_fn(i: int, ids: list[int]) -> list[int] | bool | Future | None:
        body = fmt.body(ids)
        if body is None:
            return None
        if calls[i] >= box.max_calls:
            box._count("max_calls")
            return False
        calls[i] += 1
        if pool is not None and box.runs_apart(body):
            return pool.submit(answer, body)
        return answer(body)

    try:
        out = generate(prompts, max_new_tokens, force_fn=force_fn, wait_steps=box.wait_steps, max_waits=box.max_calls)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return out, [[not f for f in row] for row in out.forced]
