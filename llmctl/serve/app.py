"""The HTTP API: OpenAI's /v1/completions, /v1/chat/completions and /v1/models, plus /health.

Every request becomes one engine request per prompt (with its `n` choices), so concurrent clients
share the running batch. Failures are `{"error": {"message", "type", "param", "code"}}` with a 4xx
status (5xx for an engine fault); the server keeps serving. A streamed answer is server-sent
events in OpenAI's chunk format ending with `data: [DONE]`; a client that goes away cancels its
request and frees its slots.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmctl.eval.lm import TextCodec
from llmctl.serve.engine import Engine, Params, QueueFull
from llmctl.serve.protocol import ApiError, ChatRequest, CompletionRequest, error_body

MAX_BODY = 4 * 1024 * 1024


class Guard:
    """ASGI middleware: the Bearer key on /v1/ routes and the request body size limit (413)."""

    def __init__(self, app: Any, api_key: str | None, max_body: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key and scope["path"].startswith("/v1/"):
            if headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {self.api_key}":
                msg = "Incorrect or missing API key: send the header 'Authorization: Bearer <key>'"
                return await _reply(send, 401, error_body(msg, "invalid_request_error", code="invalid_api_key"))
        too_big = error_body(f"request body is larger than {self.max_body} bytes", "invalid_request_error")
        if int(headers.get(b"content-length", b"0") or 0) > self.max_body:
            return await _reply(send, 413, too_big)
        body, more = b"", True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_body:
                return await _reply(send, 413, too_big)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _reply(send: Any, status: int, body: dict) -> None:
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


@dataclass
class _Choice:
    """One choice's tokens as they arrive, and the text already streamed."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    tops: list[Any] = field(default_factory=list)
    finish: str | None = None
    sent: str = ""


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop string (which is not returned), and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def safe_len(text: str, stops: Sequence[str]) -> int:
    """How much of a partial text can be streamed: not a trailing incomplete UTF-8 character (U+FFFD)
    and not a tail that may be the start of a stop string."""
    n = len(text.rstrip("\ufffd"))
    for s in stops:
        for k in range(min(len(s) - 1, n), 0, -1):
            if text[:n].endswith(s[:k]):
                n -= k
                break
    return n


class Server:
    """The routes over one engine and its tokenizer; `app` is the ASGI application."""

    def __init__(
        self,
        engine: Engine,
        codec: TextCodec,
        name: str,
        aliases: Sequence[str] = (),
        api_key: str | None = None,
        max_body: int = MAX_BODY,
    ):
        self.engine, self.codec, self.name = engine, codec, name
        self.names = {name, *aliases}
        self.ctx = engine.ctx
        self.created = int(time.time())
        api = FastAPI(title="llmctl serve", docs_url=None, redoc_url=None, openapi_url=None)
        api.add_exception_handler(RequestValidationError, self._invalid)
        api.add_exception_handler(StarletteHTTPException, self._http_error)
        api.add_exception_handler(ApiError, self._api_error)
        api.add_exception_handler(Exception, self._crash)
        api.get("/health")(self.health)
        api.get("/v1/models")(self.models)
        api.post("/v1/completions")(self.completions)
        api.post("/v1/chat/completions")(self.chat)
        self.fastapi = api
        self.app = Guard(api, api_key, max_body)

    # ------------------------------------------------------------------ errors
    async def _invalid(self, request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        if err.get("type") == "json_invalid":
            return JSONResponse(
                error_body(f"invalid JSON body: {err['msg']}", "invalid_request_error"), status_code=400
            )
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = f"{param}: {err['msg']}" if param else f"invalid request body: {err['msg']}"
        return JSONResponse(error_body(msg, "invalid_request_error", param), status_code=400)

    async def _http_error(self, request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(f"{request.url.path}: {exc.detail}", kind), status_code=exc.status_code)

    async def _api_error(self, request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def _crash(self, request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"{type(exc).__name__}: {exc}", "server_error"), status_code=500)

    # ------------------------------------------------------------------ plain routes
    async def health(self) -> JSONResponse:
        if self.engine.failed:
            return JSONResponse({"status": "error", "error": self.engine.failed}, status_code=503)
        return JSONResponse({"status": "ok", **self.engine.stats()})

    async def models(self) -> dict:
        card = {"id": self.name, "object": "model", "created": self.created, "owned_by": "llmctl"}
        return {"object": "list", "data": [{**card, "max_model_len": self.ctx}]}

    # ------------------------------------------------------------------ generation routes
    async def completions(self, body: CompletionRequest, request: Request):
        self._check_model(body.model)
        prompts, texts = self._prompts(body.prompt)
        echo_lp = body.echo and body.logprobs is not None
        jobs = []
        for ids in prompts:
            max_tokens = body.max_tokens if body.max_tokens is not None else max(0, min(16, self.ctx - len(ids)))
            self._check_length(len(ids), max_tokens, "max_tokens")
            # with echo + logprobs (lm-eval's log-likelihood call) every drawn token is returned, a stop id too
            stop_ids = () if echo_lp else self.codec.stop_ids
            jobs.append((ids, self._params(body, max_tokens, stop_ids, body.logprobs, echo_lp)))
        prefix = [t if body.echo else "" for t in texts]
        if body.stream:
            return self._stream(request, body, jobs, "text_completion", prefix)
        choices, prompt_lps, usage = await self._collect(request, jobs, body.n)
        out = []
        for idx, ch in enumerate(choices):
            k = idx // body.n
            text, stopped = cut_at_stop(self.codec.decode(ch.ids), body.stops())
            lp = None
            if body.logprobs is not None:
                lp = self._logprobs(prompts[k] if body.echo else [], prompt_lps[k], ch)
            finish = "stop" if stopped else ch.finish
            out.append({"index": idx, "text": prefix[k] + text, "logprobs": lp, "finish_reason": finish})
        return self._response("cmpl", "text_completion", out, usage)

    async def chat(self, body: ChatRequest, request: Request):
        self._check_model(body.model)
        if self.codec.chat is None:
            raise ApiError(400, f"model {self.name!r} has no chat template")
        ids = self.codec.chat([{"role": m.role, "content": m.text()} for m in body.messages])
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        self._check_length(len(ids), asked or 0, "max_tokens")
        max_tokens = asked if asked is not None else self.ctx - len(ids)
        jobs = [(ids, self._params(body, max_tokens, self.codec.stop_ids, None, False))]
        if body.stream:
            return self._stream(request, body, jobs, "chat.completion.chunk", [""])
        choices, _, usage = await self._collect(request, jobs, body.n)
        out = []
        for idx, ch in enumerate(choices):
            text, stopped = cut_at_stop(self.codec.decode(ch.ids), body.stops())
            message = {"role": "assistant", "content": text}
            out.append(
                {"index": idx, "message": message, "logprobs": None, "finish_reason": "stop" if stopped else ch.finish}
            )
        return self._response("chatcmpl", "chat.completion", out, usage)

    # ------------------------------------------------------------------ helpers
    def _check_model(self, model: str) -> None:
        if model not in self.names:
            msg = f"The model `{model}` does not exist (this server serves `{self.name}`)"
            raise ApiError(404, msg, "invalid_request_error", "model", "model_not_found")

    def _check_length(self, prompt: int, max_tokens: int, param: str) -> None:
        if prompt > self.ctx:
            msg = f"This model's maximum context length is {self.ctx} tokens, but the prompt has {prompt} tokens"
            raise ApiError(400, msg, param="prompt", code="context_length_exceeded")
        if max_tokens > self.ctx or prompt + max_tokens > self.ctx:
            msg = (
                f"This model's maximum context length is {self.ctx} tokens, you requested {prompt + max_tokens} "
                f"tokens ({prompt} in the prompt, {max_tokens} for the completion)"
            )
            raise ApiError(400, msg, param=param, code="context_length_exceeded")

    def _prompts(self, prompt: Any) -> tuple[list[list[int]], list[str]]:
        """(token ids, text) per prompt of a completions request."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise ApiError(400, "prompt is empty", param="prompt")
        if all(isinstance(x, int) for x in prompt):
            prompt = [prompt]
        ids, texts = [], []
        vocab = self.engine.model.cfg.vocab_size
        for p in prompt:
            if isinstance(p, str):
                ids.append(self.codec.encode(p) or [self.codec.eos_id])
                texts.append(p)
                continue
            if not p:
                raise ApiError(400, "a token-id prompt is empty", param="prompt")
            bad = [t for t in p if not 0 <= t < vocab]
            if bad:
                raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="prompt")
            ids.append(list(p))
            texts.append(self.codec.decode(p))
        return ids, texts

    def _params(self, body: Any, max_tokens: int, stop_ids: Sequence[int], logprobs: int | None, echo: bool) -> Params:
        return Params(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_k=body.top_k if body.top_k > 0 else None,
            top_p=body.top_p if body.top_p < 1.0 else None,
            seed=body.seed,
            n=body.n,
            stop_ids=tuple(stop_ids),
            stop_texts=body.stops(),
            logprobs=logprobs,
            echo_logprobs=echo,
        )

    def _submit(self, jobs: list[tuple[list[int], Params]]) -> tuple[asyncio.Queue, list]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        reqs = []
        try:
            for k, (ids, params) in enumerate(jobs):
                emit = lambda ev, k=k: loop.call_soon_threadsafe(q.put_nowait, (k, ev))  # noqa: E731
                reqs.append(self.engine.submit(ids, params, emit))
        except QueueFull as e:
            for r in reqs:
                r.cancel()
            raise ApiError(
                429, f"server busy: {e}; retry later", "rate_limit_exceeded", code="rate_limit_exceeded"
            ) from None
        except ValueError as e:
            for r in reqs:
                r.cancel()
            raise ApiError(400, str(e)) from None
        return q, reqs

    def _apply(self, choices: list[_Choice], prompt_lps: dict, n: int, k: int, ev: tuple) -> int | None:
        """Record one engine event of job k; the index of the choice it concerns (None: none)."""
        if ev[0] == "error":
            raise ApiError(500, f"generation failed: {ev[1]}", "server_error")
        if ev[0] == "prompt":
            prompt_lps[k] = (ev[1], ev[2])
            return None
        ch = choices[k * n + ev[1]]
        if ev[0] == "token":
            ch.ids.append(ev[2])
            ch.logprobs.append(ev[3])
            ch.tops.append(ev[4])
        else:
            ch.finish = ev[2]
        return k * n + ev[1]

    async def _collect(self, request: Request, jobs: list, n: int) -> tuple[list[_Choice], dict, dict]:
        q, reqs = self._submit(jobs)
        choices = [_Choice() for _ in range(len(jobs) * n)]
        prompt_lps: dict = {}
        try:
            left, checked = len(choices), time.monotonic()
            while left:
                if time.monotonic() - checked > 0.1:  # a client that went away cancels its request
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        raise ApiError(499, "client disconnected")
                try:
                    k, ev = await asyncio.wait_for(q.get(), 0.1)
                except TimeoutError:
                    continue
                self._apply(choices, prompt_lps, n, k, ev)
                left -= ev[0] == "done"
        finally:
            for r in reqs:
                r.cancel()
        return choices, prompt_lps, self._usage(jobs, choices)

    def _usage(self, jobs: list, choices: list[_Choice]) -> dict:
        p = sum(len(ids) for ids, _ in jobs)
        c = sum(len(ch.ids) for ch in choices)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _piece(self, t: int) -> str:
        return self.codec.decode([t])

    def _logprobs(self, prompt: list[int], prompt_lp: tuple | None, ch: _Choice) -> dict:
        tokens = [*prompt, *ch.ids]
        lps: list[float | None] = []
        tops: list[dict | None] = []
        if prompt:
            vals, ptops = prompt_lp if prompt_lp else ([], [])
            lps = [None, *vals]
            tops = [None, *({self._piece(i): v for i, v in t} for t in ptops)]
        lps += ch.logprobs
        tops += [{self._piece(i): v for i, v in t} if t else None for t in ch.tops]
        pieces = [self._piece(t) for t in tokens]
        offsets, at = [], 0
        for s in pieces:
            offsets.append(at)
            at += len(s)
        return {"tokens": pieces, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    def _response(self, prefix: str, obj: str, choices: list, usage: dict) -> dict:
        rid = f"{prefix}-{uuid.uuid4().hex[:24]}"
        return {
            "id": rid,
            "object": obj,
            "created": int(time.time()),
            "model": self.name,
            "choices": choices,
            "usage": usage,
        }

    def _stream(self, request: Request, body: Any, jobs: list, obj: str, prefix: list[str]) -> StreamingResponse:
        q, reqs = self._submit(jobs)  # before the response starts, so a 429 or 400 is still a status
        return StreamingResponse(
            self._events(q, reqs, body, jobs, obj, prefix),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    async def _events(self, q, reqs, body: Any, jobs: list, obj: str, prefix: list[str]) -> AsyncIterator[str]:
        n, stops, chat = body.n, body.stops(), obj.startswith("chat")
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        choices = [_Choice() for _ in range(len(jobs) * n)]

        def chunk(i: int, text: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                c = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                c = {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
            data = {"id": rid, "object": obj, "created": created, "model": self.name, "choices": [c]}
            return f"data: {json.dumps(data)}\n\n"

        try:
            for i in range(len(choices)):
                if chat:
                    yield chunk(i, None, None, first=True)
                elif prefix[i // n]:
                    yield chunk(i, prefix[i // n], None)
            left = len(choices)
            while left:
                k, ev = await q.get()
                try:
                    i = self._apply(choices, {}, n, k, ev)
                except ApiError as e:
                    yield f"data: {json.dumps(e.body())}\n\n"
                    return
                if i is None:
                    continue
                ch = choices[i]
                text, stopped = cut_at_stop(self.codec.decode(ch.ids), stops)
                if ev[0] == "done":
                    left -= 1
                    if text[len(ch.sent) :]:
                        yield chunk(i, text[len(ch.sent) :], None)
                    yield chunk(i, None, "stop" if stopped else ch.finish)
                    continue
                end = safe_len(text, stops)
                if end > len(ch.sent) and not stopped:
                    yield chunk(i, text[len(ch.sent) : end], None)
                    ch.sent = text[:end]
            if body.stream_options is not None and body.stream_options.include_usage:
                usage = self._usage(jobs, choices)
                data = {"id": rid, "object": obj, "created": created, "model": self.name, "choices": [], "usage": usage}
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # the client went away (the generator is closed) or the answer is complete
            for r in reqs:
                r.cancel()


__all__ = ["MAX_BODY", "Guard", "Server", "cut_at_stop", "safe_len"]
