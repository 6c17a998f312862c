"""llmctl's special tokens and chat format: what the tokenizer and every chat user (SFT, DPO, eval) share.

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
from typing import Any, Protocol

from llmctl.errors import UsageError

UNK, BOS, EOS, PAD = "<unk>", "<|bos|>", "<|eos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)
SPECIAL_TOKENS = (BOS, EOS, PAD) + CHAT_TOKENS  # ids 1..7; 0 is <unk> (never produced with byte fallback)

ROLES = ("system", "user", "assistant")

# Jinja for transformers' `apply_chat_template` (same layout; the markers are special tokens there).
CHAT_TEMPLATE_JINJA = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


class ChatTokenizer(Protocol):
    """What the chat format needs of a tokenizer: ordinary text ids and the special tokens' ids."""

    special_ids: dict[str, int]

    def encode(self, text: str) -> list[int]: ...


def check_messages(messages: Sequence[Any]) -> None:
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
    tok: ChatTokenizer, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """Ids of a conversation and, per id, whether it is a trained (assistant) token."""
    check_messages(messages)
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
