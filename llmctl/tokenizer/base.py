"""llmctl's special tokens and chat format: what the tokenizer and every chat user (SFT, DPO, eval) share.

A conversation is a list of `{"role": "system" | "user" | "assistant" | "tool", "content": str}`. Each
turn is the role's special id, the content's ordinary tokens, then `<|end|>`:

    <|system|>You are terse.<|end|><|user|>2+2?<|end|><|assistant|>4<|end|>

Tool use: an assistant message may carry `tool_calls` (OpenAI's and transformers' layout, a list of
`{"type": "function", "function": {"name": N, "arguments": A}}`; A a dict, a JSON string or a plain
string), each answered by the next `tool` message. A tokenizer trained by llmctl has four more
control tokens (`TOOL_TOKENS`); the assistant's turn then goes on through its calls and their
outputs and ends once, after its last message:

    <|user|>47*86?<|end|><|assistant|>Let me compute.<|tool_call|>calculator 47*86<|/tool_call|>
    <|tool_output|>4042<|/tool_output|>#### 4042<|end|>

(no line break after `<|/tool_call|>`). The call body is `NAME ARG`, ARG the arguments' one value
when they have one, else their JSON (`call_body`). A tokenizer without the tool tokens (trained
before they existed) writes the same turn with GSM8K's calculator annotation as text:
`<<calculator 47*86=` for the call, `4042>>` for the output. This is also exactly what
`llmctl rl --tool` generates: the model writes the call, the tool's output is fed to it.

With `add_generation_prompt=True` a trailing `<|assistant|>` asks the model for the next turn;
generation stops at `<|end|>` (or `<|eos|>`, see `Tokenizer.stop_ids`). No BOS is added: in
pretraining, documents are separated by `<|eos|>` only, so the model never learned BOS.

The role and end markers are inserted as ids, never by tokenizing a string, so a user who types
"<|assistant|>" cannot forge a turn. `encode_chat` also returns the mask SFT trains on: the
assistant's content and its `<|end|>` (the model must learn to stop), nothing else. The Hugging
Face `chat_template` written beside the tokenizer renders the same format, so
`AutoTokenizer.apply_chat_template` gives the same ids for ordinary text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from llmctl.errors import UsageError

UNK, BOS, EOS, PAD = "<unk>", "<|bos|>", "<|eos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)
SPECIAL_TOKENS = (BOS, EOS, PAD) + CHAT_TOKENS  # ids 1..7; 0 is <unk> (never produced with byte fallback)
TOOL_CALL, TOOL_CALL_END, TOOL_OUTPUT, TOOL_OUTPUT_END = (
    "<|tool_call|>",
    "<|/tool_call|>",
    "<|tool_output|>",
    "<|/tool_output|>",
)
TOOL_TOKENS = (TOOL_CALL, TOOL_CALL_END, TOOL_OUTPUT, TOOL_OUTPUT_END)  # ids 8..11 of a tokenizer that has them
TEXT_CALL, TEXT_CALL_END, TEXT_OUTPUT_END = "<<", "=", ">>"  # the text markers of a tokenizer without them

ROLES = ("system", "user", "assistant", "tool")


def chat_template_jinja(tool_tokens: bool = True) -> str:
    """Jinja for transformers' `apply_chat_template`: the same layout as `encode_chat` (the markers are
    special tokens there), tool turns included; with `tool_tokens=False`, the text annotation."""
    call, call_end, out, out_end = (
        (TOOL_CALL, TOOL_CALL_END, TOOL_OUTPUT, TOOL_OUTPUT_END)
        if tool_tokens
        else (TEXT_CALL, TEXT_CALL_END, "", TEXT_OUTPUT_END)
    )
    return (
        "{%- macro tool_call(c) -%}{%- set f = c['function'] if c['function'] is defined else c -%}"
        "{%- set a = f['arguments'] if f['arguments'] is defined else {} -%}"
        f"{{{{ '{call}' + f['name'] + ' ' }}}}"
        "{%- if a is string -%}{{ a }}{%- elif a is mapping and a|length == 1 -%}"
        "{%- set v = (a.values()|list)[0] -%}{%- if v is string -%}{{ v }}{%- else -%}{{ v|tojson }}{%- endif -%}"
        "{%- else -%}{{ a|tojson }}{%- endif -%}"
        f"{{{{ '{call_end}' }}}}"
        "{%- endmacro -%}"
        "{%- set ns = namespace(calls=[], k=0) -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'tool' -%}"
        f"{{{{ '{out}' + message['content'] + '{out_end}' }}}}"
        "{%- if ns.k < ns.calls|length -%}{{ tool_call(ns.calls[ns.k]) }}{%- set ns.k = ns.k + 1 -%}{%- endif -%}"
        "{%- else -%}"
        "{%- if not (message['role'] == 'assistant' and loop.index0 > 0 and messages[loop.index0 - 1]['role'] == 'tool') -%}"
        "{{ '<|' + message['role'] + '|>' }}{%- endif -%}"
        "{{ message['content'] }}"
        "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
        "{%- set ns.calls = message['tool_calls'] -%}{%- set ns.k = 1 -%}{{ tool_call(ns.calls[0]) }}"
        "{%- else -%}{{ '<|end|>' }}{%- endif -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt and not (messages and messages[-1]['role'] == 'tool') -%}{{ '<|assistant|>' }}{%- endif -%}"
    )


CHAT_TEMPLATE_JINJA = chat_template_jinja(True)


class ChatTokenizer(Protocol):
    """What the chat format needs of a tokenizer: ordinary text ids and the special tokens' ids."""

    special_ids: dict[str, int]

    def encode(self, text: str) -> list[int]: ...


def call_parts(call: Any) -> tuple[str, Any]:
    """(name, arguments) of one `tool_calls` entry (`{"function": {...}}` or `{"name", "arguments"}`)."""
    f = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
        raise UsageError(f"a tool call must be {{'function': {{'name': ..., 'arguments': ...}}}}, got {call!r:.80}")
    return f["name"], f.get("arguments", {})


def call_arg(arguments: Any) -> str:
    """The text a tool gets for a call's arguments: their one value when they have one, a plain string
    as it is, else their JSON."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
        if not isinstance(parsed, dict):
            return arguments
        arguments = parsed
    if isinstance(arguments, dict) and len(arguments) == 1:
        (v,) = arguments.values()
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return json.dumps(arguments, ensure_ascii=False)


def call_body(call: Any) -> str:
    """`NAME ARG`: how llmctl's format writes a tool call between its markers."""
    name, arguments = call_parts(call)
    return f"{name} {call_arg(arguments)}"


def check_messages(messages: Sequence[Any]) -> None:
    """One-line errors for a conversation that is not a list of known-role text messages, or whose
    tool turns do not answer an assistant's `tool_calls` one for one."""
    if not isinstance(messages, (list, tuple)):
        raise UsageError(f"a conversation must be a list of messages, got {type(messages).__name__}")
    open_calls = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UsageError(f"message {i}: expected {{'role': ..., 'content': ...}}, got {m!r:.80}")
        if m["role"] not in ROLES:
            raise UsageError(f"message {i}: unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise UsageError(f"message {i}: content must be a string, got {type(m['content']).__name__}")
        calls = m.get("tool_calls")
        if calls is not None and (m["role"] != "assistant" or not isinstance(calls, (list, tuple))):
            raise UsageError(f"message {i}: tool_calls must be a list, on an assistant message")
        if m["role"] == "tool":
            if not open_calls:
                raise UsageError(f"message {i}: a tool message must answer an assistant's tool call")
            open_calls -= 1
        elif open_calls:
            raise UsageError(
                f"message {i}: {open_calls} tool call(s) of the assistant are not answered by tool messages"
            )
        for c in calls or ():
            call_parts(c)
        open_calls += len(calls or ())


def has_tool_tokens(tok: ChatTokenizer) -> bool:
    return all(t in tok.special_ids for t in TOOL_TOKENS)


def tool_call_ids(tok: ChatTokenizer, body: str) -> list[int]:
    """A call as the model writes it: `<|tool_call|>BODY<|/tool_call|>` (text: `<<BODY=`)."""
    if has_tool_tokens(tok):
        return [tok.special_ids[TOOL_CALL], *tok.encode(body), tok.special_ids[TOOL_CALL_END]]
    return tok.encode(TEXT_CALL + body + TEXT_CALL_END)


def tool_output_ids(tok: ChatTokenizer, output: str) -> list[int]:
    """A tool's output as it is fed to the model: `<|tool_output|>OUT<|/tool_output|>` (text: `OUT>>`)."""
    if has_tool_tokens(tok):
        return [tok.special_ids[TOOL_OUTPUT], *tok.encode(output), tok.special_ids[TOOL_OUTPUT_END]]
    return tok.encode(output + TEXT_OUTPUT_END)


def encode_chat(
    tok: ChatTokenizer, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """Ids of a conversation and, per id, whether it is a trained (assistant) token: the assistant's
    content, its tool calls and its `<|end|>`; never a tool's output (see the module docstring for
    the layout of tool turns; each call is followed by its output, in order)."""
    check_messages(messages)
    end = tok.special_ids["<|end|>"]
    ids: list[int] = []
    mask: list[bool] = []

    def put(new: list[int], trained: bool) -> None:
        ids.extend(new)
        mask.extend([trained] * len(new))

    pending: list[Any] = []  # calls of the current assistant turn still to write (one per tool answer)
    for k, m in enumerate(messages):
        role = m["role"]
        if role == "tool":
            put(tool_output_ids(tok, m["content"]), False)
            if pending:
                put(tool_call_ids(tok, call_body(pending.pop(0))), True)
            continue
        continues = role == "assistant" and k > 0 and messages[k - 1]["role"] == "tool"
        if not continues:
            put([tok.special_ids[f"<|{role}|>"]], False)
        put(tok.encode(m["content"]), role == "assistant")
        calls = list(m.get("tool_calls") or ())
        if calls:
            put(tool_call_ids(tok, call_body(calls[0])), True)
            pending = calls[1:]
        else:
            put([end], role == "assistant")
    if add_generation_prompt and not (messages and messages[-1]["role"] == "tool"):
        put([tok.special_ids["<|assistant|>"]], False)
    return ids, mask
