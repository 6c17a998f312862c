"""A Hugging Face model's own tokenizer: `tokenizer.json` through `tokenizers`, the chat template
through jinja2 (rendered as transformers renders it), with the same surface as llmctl's
sentencepiece `Tokenizer` for the trainers, generation and eval.

The chat encoding equals `AutoTokenizer.apply_chat_template(..., tokenize=True)` token for token:
the template is rendered to text and the text encoded without added special tokens (the
template writes BOS itself). The SFT mask is llmctl's rule for its own template: each assistant
message's content plus the end-of-turn marker right after it (`<|im_end|>`, `<|eot_id|>`, the eos
token), nothing else. It is found in the rendered text (the content as given or stripped, searched
left to right, preferring an occurrence followed by the end marker) and mapped onto tokens through
their character offsets; a token that overlaps a span is trained.

Tool turns (an assistant message with `tool_calls`, `tool` messages) are rendered by the template
as transformers renders them; the mask also covers each call the template writes (its
`<tool_call>...</tool_call>` block, or from the tool's name, through an end-of-turn marker right
after it, and the text joining it to the content before it), never a tool's output. `tool_format` reads the template's tool-call layout for
`llmctl rl --tool`.

Special-token strings typed in text are parsed as special tokens, as transformers does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as _Tokenizers

from llmctl.errors import UsageError
from llmctl.store.integrity import fingerprint_file
from llmctl.tokenizer.base import call_parts, check_messages

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"  # the tool-call format read from a template
_SENTINEL_NAME, _SENTINEL_OUT = "llmctl_probe_tool", "llmctl_probe_output"
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|end_of_turn|>")


class _Generation(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask tag) renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise UsageError(f"chat template does not parse ({e.message}, line {e.lineno})") from None


def _token_text(v: Any) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def _read_json(f: Path) -> dict[str, Any]:
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except json.JSONDecodeError as e:
        raise UsageError(f"{f}: not JSON ({e})") from None


class HFTokenizer:
    """tokenizer.json + tokenizer_config.json (+ chat_template.jinja, generation_config.json) of a directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        f = self.path / "tokenizer.json"
        if not f.is_file():
            raise UsageError(f"{self.path}: no tokenizer.json (only Hugging Face fast tokenizers are supported)")
        try:
            self._tok = _Tokenizers.from_file(str(f))
        except Exception as e:  # noqa: BLE001 (tokenizers raises a bare Exception on a bad file)
            raise UsageError(f"{f}: cannot load ({str(e).splitlines()[0]})") from None
        cfg = {**_read_json(self.path / "special_tokens_map.json"), **_read_json(self.path / "tokenizer_config.json")}
        self.special_tokens = {
            k: t for k in ("bos_token", "eos_token", "pad_token", "unk_token") if (t := _token_text(cfg.get(k)))
        }
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0
        self.special_ids = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        ids = {k: vocab.get(t) for k, t in self.special_tokens.items()}
        self.bos_id, self.eos_id = ids.get("bos_token"), ids.get("eos_token")
        self.pad_id = ids.get("pad_token") if ids.get("pad_token") is not None else self.eos_id
        gen = _read_json(self.path / "generation_config.json").get("eos_token_id")
        gen_ids = [gen] if isinstance(gen, int) else list(gen or [])
        turn = [vocab[t] for t in END_OF_TURN if t in vocab]
        stops = [i for i in [self.eos_id, *gen_ids, *turn] if i is not None]
        self.stop_ids = tuple(dict.fromkeys(stops))
        end_strings = [self.special_tokens.get("eos_token"), *END_OF_TURN]
        self.end_of_turn = tuple(dict.fromkeys(s for s in end_strings if s and s in vocab))
        template = cfg.get("chat_template")
        if (self.path / "chat_template.jinja").is_file():
            template = (self.path / "chat_template.jinja").read_text()
        if isinstance(template, list):  # named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template: str | None = template
        self._template = compile_template(template) if template else None

    # ------------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no BOS/EOS added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    @property
    def fingerprint(self) -> str:
        return fingerprint_file(self.path / "tokenizer.json")

    def lineage(self) -> dict[str, Any]:
        return {"path": str(self.path), "stage": "tokenizer", "fingerprint": self.fingerprint}

    # ------------------------------------------------------------------ chat
    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The conversation as the model's chat template writes it (transformers' rendering)."""
        if self._template is None:
            raise UsageError(f"{self.path}: the tokenizer has no chat template")
        check_messages(messages)
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                tools=None,
                documents=None,
                **self.special_tokens,
            )
        except jinja2.TemplateError as e:
            raise UsageError(f"{self.path}: chat template: {e}") from None

    def encode_chat(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[bool]]:
        """Ids of a conversation in the model's template and, per id, whether it is trained (assistant)."""
        text = self.render(messages, add_generation_prompt)
        enc = self._tok.encode(text, add_special_tokens=False)
        spans, pos = [], 0
        for m in messages:
            calls = list(m.get("tool_calls") or ())
            found = self._find(text, m["content"], pos, m["role"] == "assistant" and not calls)
            if found is not None:
                start, pos = found
                if m["role"] == "assistant":
                    spans.append((start, pos))
            for c in calls:  # the assistant's calls are trained, and what joins them to its content
                if (got := self._call_span(text, c, pos)) is not None:
                    start = found[0] if found is not None and m["role"] == "assistant" else got[0]
                    spans.append((start, got[1]))
                    found, pos = (start, got[1]), got[1]
        mask = [any(a < e and b > s for s, e in spans) for a, b in enc.offsets]
        return list(enc.ids), mask

    def _call_span(self, text: str, call: dict[str, Any], pos: int) -> tuple[int, int] | None:
        """(start, end) of one tool call as the template wrote it from `pos`: its `<tool_call>` block
        (or, in a template without one, from the tool's name) through the end-of-turn marker right
        after it where there is one."""
        name = call_parts(call)[0]
        i = text.find(TOOL_CALL_OPEN, pos)
        if i >= 0 and (j := text.find(TOOL_CALL_CLOSE, i)) >= 0:
            end = j + len(TOOL_CALL_CLOSE)
        elif (i := text.find(name, pos)) >= 0:
            ends = [k for e in self.end_of_turn if (k := text.find(e, i)) >= 0]
            end = min(ends) if ends else i + len(name)
        else:
            return None
        for e in self.end_of_turn:
            if text.startswith(e, end):
                return i, end + len(e)
        return i, end

    def _find(self, text: str, content: str, pos: int, with_end: bool) -> tuple[int, int] | None:
        """(start, end) of a message's content in the rendered text from `pos` (as written, else
        stripped); for an assistant message, including the end-of-turn marker right after it
        where there is one (that occurrence is preferred: a reply equal to a role name)."""
        forms = [c for c in dict.fromkeys((content, content.strip())) if c]
        if with_end:
            hits = [
                (i, i + len(c) + len(e)) for c in forms for e in self.end_of_turn if (i := text.find(c + e, pos)) >= 0
            ]
            if hits:
                return min(hits)
        for c in forms:
            if (i := text.find(c, pos)) >= 0:
                return i, i + len(c)
        return None

    def tool_format(self) -> tuple[str, str, str]:
        """(call close marker, text fed before a tool's output, text fed after it) of the model's
        chat template: the model writes `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
        (Qwen2.5/Qwen3/Hermes layout) and what the template renders between that call's end and the
        next assistant reply, around the tool's output, is fed to it. A one-line error for a template
        without that tool-call format."""
        call = {"type": "function", "function": {"name": _SENTINEL_NAME, "arguments": {"x": "1"}}}
        probe = [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": _SENTINEL_OUT},
        ]
        try:
            text = self.render(probe, add_generation_prompt=True)
        except UsageError:
            text = ""
        vocab = self._tok.get_vocab(with_added_tokens=True)
        i = text.find(_SENTINEL_NAME)
        j = text.find(TOOL_CALL_CLOSE, i) if i >= 0 else -1
        k = text.find(_SENTINEL_OUT, j) if j >= 0 else -1
        if k < 0 or text.rfind(TOOL_CALL_OPEN, 0, i) < 0 or TOOL_CALL_CLOSE not in vocab:
            raise UsageError(
                f"{self.path}: the chat template has no {TOOL_CALL_OPEN}...{TOOL_CALL_CLOSE} tool-call format "
                "(with a tool answer), which --tool needs for an imported model"
            )
        end = j + len(TOOL_CALL_CLOSE)
        return TOOL_CALL_CLOSE, text[end:k], text[k + len(_SENTINEL_OUT) :]

    def apply_chat_template(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
        return self.encode_chat(messages, add_generation_prompt)[0]

    def response_ids(self, prompt: Sequence[dict[str, str]], response: str) -> list[int]:
        """Ids of an assistant reply after `prompt` (rendered with the generation prompt), through its
        end-of-turn marker: the conversation's render minus the prompt's."""
        p_ids = self.apply_chat_template(prompt, add_generation_prompt=True)
        full = self.apply_chat_template([*prompt, {"role": "assistant", "content": response}])
        if full[: len(p_ids)] != p_ids:
            raise UsageError(
                f"{self.path}: the chat template does not render a prompt as a prefix of the conversation; "
                "train on `messages` rows instead"
            )
        tail = full[len(p_ids) :]
        ends = {self._tok.token_to_id(s) for s in self.end_of_turn}
        for i, t in enumerate(tail):
            if t in ends:
                return tail[: i + 1]
        return tail

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, path={str(self.path)!r})"


def is_hf_tokenizer_dir(path: str | Path, llmctl_marker: str) -> bool:
    """A directory with a tokenizer.json and without llmctl's own tokenizer description file."""
    return (Path(path) / "tokenizer.json").is_file() and not (Path(path) / llmctl_marker).is_file()
