"""`llmctl chat`: an interactive terminal chat, in-process on an engine or against `llmctl serve`.

Commands: /reset (forget the conversation, keep the system prompt), /system TEXT, /temperature X,
/exit. Ctrl-C during an answer stops that answer (it is left out of the history); Ctrl-C or
Ctrl-D at the prompt ends the chat.
"""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

from llmctl.eval.lm import TextCodec
from llmctl.serve.app import safe_len
from llmctl.serve.engine import Engine, Params

HELP = "commands: /reset  /system TEXT  /temperature X  /exit   (Ctrl-C stops an answer)"


class LocalChat:
    """Answers from an engine in this process (no HTTP)."""

    def __init__(self, engine: Engine, codec: TextCodec):
        self.engine, self.codec = engine, codec

    def stream(
        self, messages: list[dict], temperature: float, max_tokens: int | None, seed: int | None
    ) -> Iterator[str]:
        ids = self.codec.chat(messages) if self.codec.chat else None
        if ids is None:
            raise ValueError("this model has no chat template")
        room = self.engine.ctx - len(ids)
        if room <= 0:
            raise ValueError(f"the conversation ({len(ids)} tokens) fills the context ({self.engine.ctx}); /reset")
        q: queue.Queue = queue.Queue()
        params = Params(min(max_tokens or room, room), temperature, seed=seed, stop_ids=self.codec.stop_ids)
        req = self.engine.submit(ids, params, q.put)
        out: list[int] = []
        sent = ""
        try:
            while True:
                ev = q.get()
                if ev[0] == "error":
                    raise RuntimeError(ev[1])
                if ev[0] == "done":
                    text = self.codec.decode(out)
                    if text[len(sent) :]:
                        yield text[len(sent) :]
                    return
                if ev[0] == "token":
                    out.append(ev[2])
                    text = self.codec.decode(out)
                    end = safe_len(text, ())
                    if end > len(sent):
                        yield text[len(sent) : end]
                        sent = text[:end]
        finally:
            req.cancel()


class RemoteChat:
    """Answers from a running `llmctl serve` (or any OpenAI-compatible server) over HTTP."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None):
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.model = model or self._get("/models")["data"][0]["id"]

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(urllib.request.Request(self.url + path, headers=self.headers), timeout=30) as r:
            return json.loads(r.read())

    def stream(
        self, messages: list[dict], temperature: float, max_tokens: int | None, seed: int | None
    ) -> Iterator[str]:
        body = {"model": self.model, "messages": messages, "temperature": temperature, "stream": True}
        if max_tokens:
            body["max_tokens"] = max_tokens
        if seed is not None:
            body["seed"] = seed
        req = urllib.request.Request(self.url + "/chat/completions", json.dumps(body).encode(), self.headers)
        try:
            resp = urllib.request.urlopen(req, timeout=600)
        except urllib.error.HTTPError as e:
            raise ValueError(json.loads(e.read()).get("error", {}).get("message", str(e))) from None
        with resp:  # closing the connection (Ctrl-C) makes the server cancel the answer
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    return
                ev = json.loads(data)
                if "error" in ev:
                    raise RuntimeError(ev["error"]["message"])
                for c in ev["choices"]:
                    if c["delta"].get("content"):
                        yield c["delta"]["content"]


def chat_loop(
    backend: LocalChat | RemoteChat,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
    system: str | None = None,
    temperature: float = 0.7,
    max_tokens: int | None = None,
    seed: int | None = None,
) -> list[dict]:
    """Read lines until /exit, Ctrl-D or Ctrl-C at the prompt; stream each answer through `write`.
    Returns the conversation (without the system prompt)."""
    history: list[dict] = []
    write(HELP + "\n")
    while True:
        try:
            line = read("> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return history
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line[1:].partition(" ")
            if cmd in ("exit", "quit"):
                return history
            if cmd == "reset":
                history = []
                write("(conversation cleared)\n")
            elif cmd == "system":
                system = arg.strip() or None
                write(f"(system prompt {'set' if system else 'cleared'})\n")
            elif cmd == "temperature":
                try:
                    t = float(arg)
                    if not 0 <= t <= 2:
                        raise ValueError
                    temperature = t
                    write(f"(temperature {temperature})\n")
                except ValueError:
                    write("(/temperature takes a number from 0 to 2)\n")
            else:
                write(HELP + "\n")
            continue
        user = {"role": "user", "content": line}
        msgs = ([{"role": "system", "content": system}] if system else []) + history + [user]
        answer = ""
        parts = backend.stream(msgs, temperature, max_tokens, seed)
        try:
            for d in parts:
                write(d)
                answer += d
        except KeyboardInterrupt:
            parts.close()
            write(" [stopped]\n")
            continue
        except (ValueError, RuntimeError) as e:
            write(f"(error: {e})\n")
            continue
        write("\n")
        history += [user, {"role": "assistant", "content": answer}]


__all__ = ["LocalChat", "RemoteChat", "chat_loop"]
