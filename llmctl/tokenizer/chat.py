"""llmctl's chat format, shared by SFT, reward, DPO, generate and eval.

A conversation is a list of `{"role": "system" | "user" | "assistant", "content": str}`. Each
turn is the role's special id, the content's ordinary tokens, then `<|end|>`:

    <|system|>You are terse.<|end|><|user|>2+2?<|end|><|assistant|>4<|end|>

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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from llmctl.errors import UsageError

if TYPE_CHECKING:
    from llmctl.tokenizer.spm import Tokenizer

ROLES = ("system", "user", "assistant")

# Jinja for transformers' `apply_chat_template` (same layout; the markers are special tokens there).
CHAT_TEMPLATE_JINJA = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _check(messages: Sequence[Any]) -> None:
    if not isinstance(messages, (list, tuple)):
        raise UsageError(f"a conversation must be a list of messages, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UsageError(f"message {i}: expected {{'role': ..., 'content': ...}}, got {m!r:.80}")
        if m["role"] not in ROLES:
            raise UsageError(f"message {i}: unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise UsageError(f"message {i}: content must be a string, got {type(m['content']).__name__}")


def encode_chat(
    tok: Tokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """Ids of a conversation and, per id, whether it is a trained (assistant) token."""
    _check(messages)
    end = tok.special_ids["<|end|>"]
    ids: list[int] = []
    mask: list[bool] = []
    for m in messages:
        content = tok.encode(m["content"])
        trained = m["role"] == "assistant"
        ids.append(tok.special_ids[f"<|{m['role']}|>"])
        mask.append(False)
        ids += content
        ids.append(end)
        mask += [trained] * (len(content) + 1)
    if add_generation_prompt:
        ids.append(tok.special_ids["<|assistant|>"])
        mask.append(False)
    return ids, mask


def apply_chat_template(
    tok: Tokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
) -> list[int]:
    """Ids of a conversation in llmctl's chat format."""
    return encode_chat(tok, messages, add_generation_prompt)[0]


def render_chat(messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The conversation as display text (markers written out); for humans, never for encoding."""
    _check(messages)
    text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
    return text + ("<|assistant|>" if add_generation_prompt else "")


__all__ = ["ROLES", "CHAT_TEMPLATE_JINJA", "encode_chat", "apply_chat_template", "render_chat"]
