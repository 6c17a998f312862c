"""Conversations in llmctl's chat format (defined in llmctl.tokenizer.base): encoded ids, the SFT
mask, and display text."""

from __future__ import annotations

from collections.abc import Sequence

from llmctl.tokenizer import base
from llmctl.tokenizer.base import (
    CHAT_TEMPLATE_JINJA,
    ROLES,
    TOOL_CALL,
    TOOL_CALL_END,
    TOOL_OUTPUT,
    TOOL_OUTPUT_END,
    ChatTokenizer,
    call_body,
    check_messages,
)


def encode_chat(
    tok: ChatTokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """Ids of a conversation and the SFT mask: in llmctl's chat format, or in a Hugging Face
    model's own template when the tokenizer has one (`llmctl.tokenizer.hf.HFTokenizer.encode_chat`)."""
    if hasattr(tok, "encode_chat"):
        return tok.encode_chat(messages, add_generation_prompt)
    return base.encode_chat(tok, messages, add_generation_prompt)


def apply_chat_template(
    tok: ChatTokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
) -> list[int]:
    """Ids of a conversation in llmctl's chat format."""
    return encode_chat(tok, messages, add_generation_prompt)[0]


def render_chat(messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The conversation as display text (markers written out); for humans, never for encoding."""
    check_messages(messages)
    parts: list[str] = []
    pending: list = []
    for k, m in enumerate(messages):
        if m["role"] == "tool":
            parts.append(f"{TOOL_OUTPUT}{m['content']}{TOOL_OUTPUT_END}")
            if pending:
                parts.append(f"{TOOL_CALL}{call_body(pending.pop(0))}{TOOL_CALL_END}")
            continue
        if not (m["role"] == "assistant" and k > 0 and messages[k - 1]["role"] == "tool"):
            parts.append(f"<|{m['role']}|>")
        parts.append(m["content"])
        calls = list(m.get("tool_calls") or ())
        if calls:
            parts.append(f"{TOOL_CALL}{call_body(calls[0])}{TOOL_CALL_END}")
            pending = calls[1:]
        else:
            parts.append("<|end|>")
    ends_in_tool = bool(messages) and messages[-1]["role"] == "tool"
    return "".join(parts) + ("<|assistant|>" if add_generation_prompt and not ends_in_tool else "")


__all__ = ["ROLES", "CHAT_TEMPLATE_JINJA", "encode_chat", "apply_chat_template", "render_chat"]
