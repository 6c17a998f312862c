"""Conversations in llmctl's chat format (defined in llmctl.tokenizer.base): encoded ids, the SFT
mask, and display text."""

from __future__ import annotations

from collections.abc import Sequence

from llmctl.tokenizer.base import CHAT_TEMPLATE_JINJA, ROLES, ChatTokenizer, check_messages, encode_chat


def apply_chat_template(
    tok: ChatTokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
) -> list[int]:
    """Ids of a conversation in llmctl's chat format."""
    return encode_chat(tok, messages, add_generation_prompt)[0]


def render_chat(messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The conversation as display text (markers written out); for humans, never for encoding."""
    check_messages(messages)
    text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
    return text + ("<|assistant|>" if add_generation_prompt else "")


__all__ = ["ROLES", "CHAT_TEMPLATE_JINJA", "encode_chat", "apply_chat_template", "render_chat"]
