"""A continuous-batching engine over llmctl's `Transformer`: requests join and leave a running batch.

Every running sequence owns one slot of a `SlotCache` (keys and values for `max_running` rows of
the model's full context). A new request is prefilled alone, exactly as `llmctl generate` prefills
it, then joins the batch; each step decodes one token for every running row at once, each row at
its own position, with a mask that hides the unused tail of shorter rows. Finished rows leave
between steps and the last row moves into the freed slot, so rows 0..B-1 are always the batch.

Numerics: a row's tokens are those of `generate()` alone (greedy, and sampled with the same seed),
up to float rounding of a batched matrix product; a model with clear favourites gives identical
tokens (tests/serve/test_engine.py). One thread runs the model; callers talk to it through
`submit` (thread-safe) and the `emit` callback they pass, which the engine calls from its thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llmctl.eval.lm import pad_width
from llmctl.model.generate import filter_logits
from llmctl.model.transformer import KVCache, Transformer


class QueueFull(Exception):
    """More requests are waiting than the engine accepts (the server answers 429)."""


@dataclass
class Params:
    """How one request samples: temperature 0 = greedy; choice j of n draws from seed + j."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    n: int = 1
    stop_ids: tuple[int, ...] = ()
    stop_texts: tuple[str, ...] = ()
    logprobs: int | None = None  # top alternatives per generated token (None: no logprobs)
    echo_logprobs: bool = False  # also the log-probs of the prompt tokens


@dataclass
class Request:
    """A submitted request: `cancel()` stops it (waiting or running) and frees its slots."""

    prompt: list[int]
    params: Params
    emit: Callable[[tuple], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Row:
    req: Request
    choice: int
    gen: torch.Generator
    out: list[int] = field(default_factory=list)
    next: int = 0


class SlotCache:
    """Duck-types `KVCache` for a decode step: row i writes its new key at its own length lens[i]."""

    def __init__(self, model: Transformer, slots: int):
        cfg = model.cfg
        p0 = next(model.parameters())
        shape = (slots, cfg.n_kv_head, cfg.max_seq_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=p0.device, dtype=p0.dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=p0.device, dtype=p0.dtype) for _ in range(cfg.n_layer)]
        self.lens = torch.zeros(slots, dtype=torch.long, device=p0.device)
        self.max_len = cfg.max_seq_len
        self.pos = 0  # the Transformer adds to it; positions are always passed explicitly here
        self.rows = 0  # the active rows of the current step
        self.width = 0  # keys the current step reads

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.rows
        r = torch.arange(b, device=k.device)
        self.k[layer][r, :, self.lens[:b]] = k[:, :, 0]
        self.v[layer][r, :, self.lens[:b]] = v[:, :, 0]
        return self.k[layer][:b, :, : self.width], self.v[layer][:b, :, : self.width]

    def view(self, slot: int) -> KVCache:
        """A plain one-row `KVCache` over the slot's storage (the prefill of one prompt)."""
        kc = KVCache.__new__(KVCache)
        kc.k = [t[slot : slot + 1] for t in self.k]
        kc.v = [t[slot : slot + 1] for t in self.v]
        kc.pos, kc.max_len = 0, self.max_len
        return kc

    def copy(self, src: int, dst: int) -> None:
        n = int(self.lens[src])
        for t in (*self.k, *self.v):
            t[dst, :, :n] = t[src, :, :n]
        self.lens[dst] = n


def prompt_logprobs(model: Transformer, ids: list[int], top: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Log-probs of ids[1:] given their prefixes, and the `top` likeliest ids at each position.

    The row is right-padded to `llmctl eval`'s width (`pad_width`), as `LM.score` pads it, so a
    lone row gives the numbers `llmctl eval` computes for it (up to the rounding of its lm head)."""
    n = len(ids)
    width = pad_width(n, model.cfg.max_seq_len)
    x = torch.zeros(1, width, dtype=torch.long, device=next(model.parameters()).device)
    x[0, :n] = torch.tensor(ids)
    logp = F.log_softmax(model(x)[0, : n - 1].float(), dim=-1)
    tgt = torch.tensor(ids[1:], device=logp.device)
    vals = logp.gather(1, tgt[:, None])[:, 0].double().tolist()
    k = max(1, top)
    tv, ti = logp.topk(k, dim=-1)
    tops = [list(zip(i.tolist(), v.double().tolist())) for i, v in zip(ti, tv)]
    return vals, tops


class Engine:
    """One model thread serving many requests: `submit` queues, the thread admits, decodes, emits.

    Events passed to a request's `emit`: ("prompt", logprobs, tops) once when echo log-probs were
    asked; ("token", choice, id, logprob, tops | None) per new token; ("done", choice, reason)
    with reason "stop" (a stop id or stop string) or "length"; ("error", message)."""

    def __init__(
        self,
        model: Transformer,
        decode: Callable[[Sequence[int]], str],
        max_running: int = 32,
        max_queued: int = 64,
    ):
        self.model = model.eval()
        self.decode = decode
        self.ctx = model.cfg.max_seq_len
        self.max_running, self.max_queued = max_running, max_queued
        self.cache = SlotCache(model, max_running)
        self.rows: list[_Row] = []
        self.waiting: deque[Request] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.failed: str | None = None
        self.generated = 0  # tokens drawn since start (all requests)
        self.thread = threading.Thread(target=self._loop, name="llmctl-engine", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ caller side (any thread)
    def submit(self, prompt: list[int], params: Params, emit: Callable[[tuple], None]) -> Request:
        """Queue a request; raises QueueFull past `max_queued` waiting requests, ValueError when it
        cannot run (empty prompt, more choices than slots, past the context)."""
        if not prompt:
            raise ValueError("the prompt has no tokens")
        if params.n > self.max_running:
            raise ValueError(f"n={params.n} is more than the server's {self.max_running} running sequences")
        if len(prompt) + params.max_tokens > self.ctx or len(prompt) > self.ctx:
            raise ValueError(f"prompt ({len(prompt)}) + max_tokens ({params.max_tokens}) > context ({self.ctx})")
        req = Request(list(prompt), params, emit)
        with self.cond:
            if len(self.waiting) >= self.max_queued:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (the server's limit is {self.max_queued})")
            self.waiting.append(req)
            self.cond.notify()
        return req

    def stats(self) -> dict[str, int]:
        return {"running": len(self.rows), "queued": len(self.waiting)}

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout=5)

    # ------------------------------------------------------------------ the model thread
    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self.cond:
                        while not self.stopping and not self.waiting and not self.rows:
                            self.cond.wait(timeout=0.5)
                        if self.stopping:
                            return
                    self._admit()
                    self._retire()  # rows that ended on their first token
                    if self.rows:
                        self._step()
                        self._retire()
        except Exception as e:  # the loop itself broke: every request gets the error, /health says so
            self.failed = f"{type(e).__name__}: {e}"
            for r in self.rows:
                r.req.emit(("error", self.failed))
            raise

    def _admit(self) -> None:
        while True:
            with self.cond:
                while self.waiting and self.waiting[0].cancelled:
                    self.waiting.popleft()
                if not self.waiting or self.waiting[0].params.n > self.max_running - len(self.rows):
                    return
                req = self.waiting.popleft()
            try:
                self._prefill(req)
            except Exception as e:  # one request failing does not stop the others
                req.emit(("error", f"{type(e).__name__}: {e}"))

    def _prefill(self, req: Request) -> None:
        p = req.params
        if p.echo_logprobs:
            vals, tops = prompt_logprobs(self.model, req.prompt, p.logprobs or 1)
            req.emit(("prompt", vals, tops))
        if p.max_tokens == 0:
            req.emit(("done", 0, "length"))
            return
        slot = len(self.rows)
        device = self.cache.lens.device
        logits = self.model(torch.tensor([req.prompt], device=device), kv_cache=self.cache.view(slot))[0, -1]
        self.cache.lens[slot] = len(req.prompt)
        seed = p.seed if p.seed is not None else int(torch.randint(0, 2**62, ()))
        for j in range(p.n):
            if j:
                self.cache.copy(slot, slot + j)
            row = _Row(req, j, torch.Generator(device=device).manual_seed(seed + j))
            self.rows.append(row)
            self._take(row, logits)

    def _step(self) -> None:
        b, c = len(self.rows), self.cache
        c.rows = b
        c.width = int(c.lens[:b].max()) + 1
        nxt = torch.tensor([r.next for r in self.rows], device=c.lens.device)[:, None]
        mask = (torch.arange(c.width, device=c.lens.device)[None] <= c.lens[:b, None])[:, None, None]
        logits = self.model(nxt, positions=c.lens[:b, None].clone(), kv_cache=c, attn_mask=mask)[:, -1]
        c.lens[:b] += 1
        for i, r in enumerate(self.rows):
            if r.req.cancelled or r.next < 0:
                continue
            self._take(r, logits[i])

    def _take(self, row: _Row, logits: torch.Tensor) -> None:
        """Draw the row's next token from its logits (V,), emit it, and mark the row done (next = -1)."""
        p = row.req.params
        logits = logits.float()[None]
        if p.temperature == 0:
            tok = int(logits.argmax(-1))
        else:
            probs = filter_logits(logits / p.temperature, p.top_k, p.top_p).softmax(-1)
            tok = int(torch.multinomial(probs, 1, generator=row.gen)[0, 0])
        if tok in p.stop_ids:
            return self._finish(row, "stop")
        lp, tops = None, None
        if p.logprobs is not None:
            logp = F.log_softmax(logits[0], -1)
            lp = float(logp[tok])
            tv, ti = logp.topk(max(1, p.logprobs))
            tops = list(zip(ti.tolist(), tv.double().tolist()))
        row.out.append(tok)
        row.next = tok
        self.generated += 1
        row.req.emit(("token", row.choice, tok, lp, tops))
        if p.stop_texts and any(s in self.decode(row.out) for s in p.stop_texts):
            self._finish(row, "stop")
        elif len(row.out) >= p.max_tokens or len(row.req.prompt) + len(row.out) >= self.ctx:
            self._finish(row, "length")

    def _finish(self, row: _Row, reason: str) -> None:
        row.next = -1
        row.req.emit(("done", row.choice, reason))

    def _retire(self) -> None:
        """Drop finished and cancelled rows; the last row moves into each freed slot."""
        i = 0
        while i < len(self.rows):
            r = self.rows[i]
            if r.next >= 0 and not r.req.cancelled:
                i += 1
                continue
            last = len(self.rows) - 1
            if i != last:
                self.cache.copy(last, i)
                self.rows[i] = self.rows[last]
            self.rows.pop()


__all__ = ["Engine", "Params", "QueueFull", "Request", "SlotCache", "prompt_logprobs"]
