"""The scoring interface every eval task uses, over an llmctl checkpoint or a Hugging Face model dir.

`LM.loglikelihood` returns lm-evaluation-harness's `loglikelihood` per (context, continuation): the
summed log-probability of the continuation and whether it is greedy. `LM.score` and
`LM.generate_many` give the same numbers and tokens whatever the batch size: a row is right-padded
to a width that depends on its own length only (`pad_width`), rows of one width share a forward,
and each prompt is sampled with its own generator (seed per item). llmctl checkpoints also run the
lm head only where a target is read, compute leading tokens shared by several rows once
(`prefix_clusters`: few-shot prompts) and score a question's multi-token choices in one row after
their context (`score_packed`); both are functions of the requests alone, never of the batch. llmctl checkpoints generate in batches of similar prompt length
through `llmctl.model.generate.generate_batch`.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llmctl.errors import UsageError
from llmctl.eval.base import is_hf_dir
from llmctl.model.checkpoint import load_checkpoint, resolve_checkpoint, weights_file
from llmctl.model.generate import filter_logits, generate_batch
from llmctl.model.transformer import KVCache
from llmctl.store.dataset import fingerprint_file
from llmctl.tokenizer.chat import CHAT_TEMPLATE_JINJA, render_chat
from llmctl.tokenizer.load import load_tokenizer

PAD_MULTIPLE = 16  # the finest padding step; longer rows pad to a step of 1/16 of their length
_MARKER = re.compile(r"(<\|[A-Za-z_]+\|>)")


@dataclass
class TextCodec:
    """The tokenizer seen by eval: encode without BOS/EOS, decode without special tokens."""

    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    eos_id: int
    stop_ids: tuple[int, ...]
    fingerprint: str
    bos_id: int | None = None
    chat: Callable[[list[dict[str, str]]], list[int]] | None = None  # messages -> ids + generation prompt
    # the same conversation as its template text, and an encoder reading the template's markers in
    # text as their special ids: encode_special(chat_text(m)) == chat(m) (lm-eval's chat mode)
    chat_text: Callable[[list[dict[str, str]], bool], str] | None = None  # (messages, add_generation_prompt)
    encode_special: Callable[[str], list[int]] | None = None
    chat_template: str = ""


def pad_width(n: int, max_len: int) -> int:
    """The width a row of `n` tokens is right-padded to when scored: a function of `n` alone, so a
    row's numbers never depend on the rows batched with it. Rounded up to a multiple of 16, or of
    2^(bits(n) - 5) from 512 tokens (under 1/16 of padding), never past the context unless n is."""
    step = max(PAD_MULTIPLE, 1 << max(0, n.bit_length() - 5))
    return min(step * math.ceil(n / step), max(n, max_len))


MIN_PREFIX = 64  # rows sharing at least this many leading tokens compute them once


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefix_clusters(rows: dict[int, list[int]], spans: dict[int, int]) -> list[tuple[int, list[int]]]:
    """(prefix length, row keys) for each run of rows, in token order, whose common leading tokens
    (at least MIN_PREFIX, and ending before any row's first read position len - span) can be
    computed once: few-shot prompts sharing their shots. A function of the rows alone."""
    keys = sorted(rows, key=lambda i: (rows[i], i))
    out: list[tuple[int, list[int]]] = []
    if not keys:
        return out
    run, cur = [keys[0]], len(rows[keys[0]]) - spans[keys[0]]
    for prev, nxt in zip(keys, keys[1:]):
        p = min(cur, _lcp(rows[prev], rows[nxt]), len(rows[nxt]) - spans[nxt])
        if p >= MIN_PREFIX:
            run.append(nxt)
            cur = p
        else:
            if len(run) > 1:
                out.append((cur, run))
            run, cur = [nxt], len(rows[nxt]) - spans[nxt]
    if len(run) > 1:
        out.append((cur, run))
    return out


class LM:
    """A causal LM behind one call: `logits(ids (B, T)) -> (B, T, V) fp32`, plus a KV-cached step."""

    name: str
    max_len: int
    codec: TextCodec
    device: torch.device

    def logits(self, ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self, prompt: list[int], room: int = 0) -> tuple[torch.Tensor, Any]:  # pragma: no cover - abstract
        """Logits (V,) after the prompt and a cache state for `step` with room for `room` more tokens."""
        raise NotImplementedError

    def step(self, token: int, state: Any) -> tuple[torch.Tensor, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def lineage(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _width(self, n: int) -> int:
        return pad_width(n, self.max_len)

    def target_logprobs(self, ids: torch.Tensor, lengths: list[int], spans: list[int]) -> list[torch.Tensor]:
        """Per row r: log-softmax (spans[r], V) at the last spans[r] of its lengths[r] real positions."""
        logp = F.log_softmax(self.logits(ids, lengths).float(), dim=-1)
        return [logp[r, n - k : n] for r, (n, k) in enumerate(zip(lengths, spans))]

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score(
        self,
        inputs: Sequence[list[int]],
        targets: Sequence[list[int]],
        batch_size: int,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> list[tuple[list[float], bool]]:
        """Per request: log-probs of `targets` (the last len(targets) positions of `inputs`, shifted),
        and whether every target is the argmax. `inputs[i]` already excludes the last target.
        Requests with the same input (the choices of a multiple-choice question whose continuations
        are one token) share one row, as lm-eval's `hf` model groups them."""
        first: dict[tuple[int, ...], int] = {}
        share = [first.setdefault(tuple(x), i) for i, x in enumerate(inputs)]
        owners: dict[int, list[int]] = {}
        for i, u in enumerate(share):
            owners.setdefault(u, []).append(i)
        span = {u: max(len(targets[i]) for i in g) for u, g in owners.items()}
        out: list[Any] = [None] * len(inputs)

        def emit(u: int, logp: torch.Tensor) -> None:  # logp: (span[u], V) at the row's last positions
            for i in owners[u]:
                k = len(targets[i])
                lp = logp[span[u] - k :]
                tgt = torch.tensor(targets[i], dtype=torch.long, device=lp.device)
                vals = lp.gather(1, tgt[:, None])[:, 0].double().cpu().tolist()
                out[i] = (vals, bool((lp.argmax(-1) == tgt).all()))

        clusters = prefix_clusters({u: inputs[u] for u in owners}, span) if self.packs else []
        for plen, run in clusters:
            for u, logp, n_tok in self.score_prefixed(
                [inputs[u] for u in run], [span[u] for u in run], plen, batch_size
            ):
                emit(run[u], logp)
                if on_batch:
                    on_batch(len(owners[run[u]]), n_tok)
        done = {u for _, run in clusters for u in run}
        order = sorted((u for u in owners if u not in done), key=lambda i: (-len(inputs[i]), i))
        batches: list[list[int]] = []
        for i in order:  # a batch holds rows of one padded width only, so a row's width never
            if (
                batches
                and len(batches[-1]) < batch_size
                and self._width(len(inputs[batches[-1][0]])) == self._width(len(inputs[i]))
            ):
                batches[-1].append(i)  # depends on its neighbours
            else:
                batches.append([i])
        for idx in batches:
            width = self._width(len(inputs[idx[0]]))
            ids = torch.zeros(len(idx), width, dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(inputs[i])] = torch.tensor(inputs[i], dtype=torch.long)
            lengths = [len(inputs[i]) for i in idx]
            logps = self.target_logprobs(ids.to(self.device), lengths, [span[u] for u in idx])
            for r, u in enumerate(idx):
                emit(u, logps[r])
            if on_batch:
                on_batch(sum(len(owners[u]) for u in idx), sum(lengths))
        return out

    def score_prefixed(
        self, rows: list[list[int]], spans: list[int], plen: int, batch_size: int
    ) -> list[tuple[int, torch.Tensor, int]]:  # pragma: no cover - only for backends that pack
        raise NotImplementedError

    packs = False  # score_packed: a question's choices in one row after their shared context

    def loglikelihood(
        self,
        requests: Sequence[tuple[list[int], list[int]]],
        batch_size: int,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> list[tuple[float, bool]]:
        """lm-eval's loglikelihood: sum log p(continuation | context), is_greedy. On a backend that
        packs, requests with one context and a continuation longer than a token (a question's text
        choices) are scored in one row: the context once, then each continuation attending to it."""
        inputs, targets, ctxs = [], [], []
        for ctx, cont in requests:
            if not cont:
                raise UsageError("a continuation must have at least one token")
            if not ctx:
                ctx = [self.codec.eos_id]
            whole = (ctx + cont)[-(self.max_len + 1) :]
            inputs.append(whole[:-1])
            targets.append(cont)
            ctxs.append(ctx)
        groups: dict[tuple[int, ...], list[int]] = {}
        if self.packs:
            for i, c in enumerate(ctxs):
                groups.setdefault(tuple(c), []).append(i)
        packed = [
            g
            for c, g in groups.items()
            if len(g) > 1
            and any(len(targets[i]) > 1 for i in g)
            and len(c) + sum(len(targets[i]) - 1 for i in g) <= self.max_len
        ]
        rest = sorted(set(range(len(requests))) - {i for g in packed for i in g})
        out: list[Any] = [None] * len(requests)
        if packed:
            for g, vals in zip(
                packed, self.score_packed([(ctxs[g[0]], [targets[i] for i in g]) for g in packed], batch_size, on_batch)
            ):
                for i, v in zip(g, vals):
                    out[i] = v
        if rest:
            for i, v in zip(
                rest, self.score([inputs[i] for i in rest], [targets[i] for i in rest], batch_size, on_batch)
            ):
                out[i] = v
        return [(math.fsum(v), g) for v, g in out]

    def score_packed(
        self,
        groups: Sequence[tuple[list[int], list[list[int]]]],
        batch_size: int,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> list[list[tuple[list[float], bool]]]:  # pragma: no cover - only for backends that pack
        raise NotImplementedError

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        prompt: list[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_ids: Sequence[int] | None = None,
        stop_text: Sequence[str] = (),
    ) -> list[int]:
        """New token ids after `prompt` (greedy when temperature == 0); stops at a stop id or string."""
        stops = set(self.codec.stop_ids if stop_ids is None else stop_ids)
        prompt = prompt[-max(1, self.max_len - max_new_tokens) :]
        gen = torch.Generator().manual_seed(seed)
        logits, state = self.start(prompt, max_new_tokens)
        out: list[int] = []
        for _ in range(max_new_tokens):
            tok = sample(logits, temperature, top_k, top_p, gen)
            if tok in stops:
                break
            out.append(tok)
            if stop_text and any(s in self.codec.decode(out) for s in stop_text):
                break
            if len(prompt) + len(out) >= self.max_len:
                break
            logits, state = self.step(tok, state)
        return out

    def generate_many(
        self,
        prompts: Sequence[list[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seeds: Sequence[int] | None = None,
        stop_ids: Sequence[int] | None = None,
        stop_text: Sequence[str] = (),
        batch_size: int = 1,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> list[list[int]]:
        """`generate` for each prompt (prompt i sampled with seeds[i]); a backend may batch them
        (llmctl checkpoints do, with the shared engine), giving the same tokens as one at a time."""
        seeds = list(seeds) if seeds is not None else [0] * len(prompts)
        out = []
        for p, sd in zip(prompts, seeds):
            out.append(self.generate(p, max_new_tokens, temperature, top_k, top_p, sd, stop_ids, stop_text))
            if on_batch:
                on_batch(1, len(out[-1]))
        return out


def sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator) -> int:
    """One token from (V,) logits: argmax at temperature 0, else `llmctl.model.generate`'s top-k / nucleus
    filter and a draw from `gen` (so a checkpoint samples here what `llmctl generate` samples)."""
    logits = logits.float().cpu()[None]
    if temperature <= 0:
        return int(logits.argmax(-1))
    probs = filter_logits(logits / temperature, top_k or None, top_p if top_p < 1.0 else None).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=gen))


# ----------------------------------------------------------------------------- llmctl checkpoints


class LlmctlLM(LM):
    def __init__(self, path: str | Path, device: str = "cpu", tokenizer_dir: str | Path | None = None):
        self.path = resolve_checkpoint(path)
        self.model, self.cfg, tok_dir, _ = load_checkpoint(self.path, device=device, tokenizer_dir=tokenizer_dir)
        if tok_dir is None:
            raise UsageError(f"{path}: checkpoint has no tokenizer/ directory; pass --tokenizer")
        tok = load_tokenizer(tok_dir)
        self.tokenizer = tok
        self.codec = TextCodec(
            tok.encode,
            tok.decode,
            tok.eos_id,
            tuple(tok.stop_ids),
            tok.fingerprint,
            tok.bos_id,
            lambda m: tok.apply_chat_template(m, add_generation_prompt=True),
            render_chat,
            self._encode_special,
            CHAT_TEMPLATE_JINJA,
        )
        self.max_len = self.cfg.max_seq_len
        self.device = torch.device(device)
        self.name = str(self.path)
        self._fp = fingerprint_file(weights_file(self.path))

    def lineage(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "stage": "checkpoint", "fingerprint": self._fp}

    def _encode_special(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(_MARKER.split(text)):
            if i % 2 and part in self.tokenizer.special_ids:
                ids.append(self.tokenizer.special_ids[part])
            elif part:
                ids += self.tokenizer.encode(part)
        return ids

    def logits(self, ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        return self.model(ids)

    def target_logprobs(self, ids: torch.Tensor, lengths: list[int], spans: list[int]) -> list[torch.Tensor]:
        """The lm head and its log-softmax only at the positions read: per row, its last spans[r]
        real positions rounded up to a multiple of 8 (one head matmul per row, whose shape depends on
        that row alone), instead of (B, T, V) logits over every position."""
        h = self.model.hidden_states(ids)
        out = []
        for r, (n, k) in enumerate(zip(lengths, spans)):
            kb = min(n, 8 * math.ceil(k / 8))
            logp = F.log_softmax(self.model.lm_head(h[r, n - kb : n]).float(), dim=-1)
            out.append(logp[kb - k :])
        return out

    packs = True

    @torch.no_grad()
    def score_prefixed(
        self, rows: list[list[int]], spans: list[int], plen: int, batch_size: int
    ) -> list[tuple[int, torch.Tensor, int]]:
        """Rows sharing their first `plen` tokens: the prefix runs once (its keys and values cached),
        then each row's rest, right-padded to `pad_width` of its own length, in batches of one width
        against a copy of that cache. (row index, log-softmax (spans[r], V) at its last positions,
        tokens computed) per row."""
        dtype = next(self.model.parameters()).dtype
        pre = KVCache(self.cfg, 1, plen, device=self.device, dtype=dtype)
        self.model.hidden_states(torch.tensor([rows[0][:plen]], device=self.device), kv_cache=pre)
        order = sorted(range(len(rows)), key=lambda r: (-len(rows[r]), r))
        batches: list[list[int]] = []
        for r in order:
            w = self._width(len(rows[r]) - plen)
            if batches and len(batches[-1]) < batch_size and self._width(len(rows[batches[-1][0]]) - plen) == w:
                batches[-1].append(r)
            else:
                batches.append([r])
        out = []
        for idx in batches:
            w = self._width(len(rows[idx[0]]) - plen)
            ids = torch.zeros(len(idx), w, dtype=torch.long)
            for j, r in enumerate(idx):
                ids[j, : len(rows[r]) - plen] = torch.tensor(rows[r][plen:], dtype=torch.long)
            cache = KVCache(self.cfg, len(idx), plen + w, device=self.device, dtype=dtype)
            for layer in range(self.cfg.n_layer):
                cache.k[layer][:, :, :plen] = pre.k[layer][:, :, :plen]
                cache.v[layer][:, :, :plen] = pre.v[layer][:, :, :plen]
            cache.pos = plen
            h = self.model.hidden_states(ids.to(self.device), kv_cache=cache)
            for j, r in enumerate(idx):
                n, k = len(rows[r]) - plen, spans[r]
                kb = min(n, 8 * math.ceil(k / 8))
                logp = F.log_softmax(self.model.lm_head(h[j, n - kb : n]).float(), dim=-1)
                out.append((r, logp[kb - k :], n))
        return out

    @torch.no_grad()
    def score_packed(
        self,
        groups: Sequence[tuple[list[int], list[list[int]]]],
        batch_size: int,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> list[list[tuple[list[float], bool]]]:
        """Per group (context, continuations): one row, the context then each continuation but its
        last token, positions restarting after the context for each, and a mask letting a
        continuation see the context and itself only; a continuation's first token is read at the
        context's last position. Rows pad to `pad_width` of their own length (batch-independent)."""
        rows = []
        for ctx, conts in groups:
            n = len(ctx)
            toks, pos, seg, reads = list(ctx), list(range(n)), [0] * n, []
            for j, cont in enumerate(conts):
                start = len(toks)
                toks += cont[:-1]
                pos += range(n, n + len(cont) - 1)
                seg += [j + 1] * (len(cont) - 1)
                reads.append([n - 1] + list(range(start, start + len(cont) - 1)))
            rows.append((toks, pos, seg, reads))
        order = sorted(range(len(rows)), key=lambda i: (-len(rows[i][0]), i))
        batches: list[list[int]] = []
        for i in order:
            w = self._width(len(rows[i][0]))
            if batches and len(batches[-1]) < batch_size and self._width(len(rows[batches[-1][0]][0])) == w:
                batches[-1].append(i)
            else:
                batches.append([i])
        out: list[Any] = [None] * len(rows)
        for idx in batches:
            w = self._width(len(rows[idx[0]][0]))
            ids = torch.zeros(len(idx), w, dtype=torch.long)
            positions = torch.zeros(len(idx), w, dtype=torch.long)
            segment = torch.full((len(idx), w), -1, dtype=torch.long)
            for r, i in enumerate(idx):
                toks, pos, seg, _ = rows[i]
                ids[r, : len(toks)] = torch.tensor(toks)
                positions[r, : len(toks)] = torch.tensor(pos)
                segment[r, : len(toks)] = torch.tensor(seg)
            causal = torch.ones(w, w, dtype=torch.bool).tril()
            q, k = segment[:, :, None], segment[:, None, :]
            mask = causal & (k >= 0) & ((k == 0) | (k == q)) & (q >= 0)
            mask |= torch.eye(w, dtype=torch.bool)  # a pad query sees itself: no empty softmax row
            h = self.model.hidden_states(
                ids.to(self.device), positions=positions.to(self.device), attn_mask=mask[:, None].to(self.device)
            )
            for r, i in enumerate(idx):
                _, _, _, reads = rows[i]
                flat = [p for rd in reads for p in rd]
                logp = F.log_softmax(self.model.lm_head(h[r, flat]).float(), dim=-1)
                res, at = [], 0
                for cont, rd in zip(groups[i][1], reads):
                    lp = logp[at : at + len(rd)]
                    at += len(rd)
                    tgt = torch.tensor(cont, dtype=torch.long, device=lp.device)
                    vals = lp.gather(1, tgt[:, None])[:, 0].double().cpu().tolist()
                    res.append((vals, bool((lp.argmax(-1) == tgt).all())))
                out[i] = res
            if on_batch:
                on_batch(sum(len(groups[i][1]) for i in idx), sum(len(rows[i][0]) for i in idx))
        return out

    def start(self, prompt: list[int], room: int = 0) -> tuple[torch.Tensor, Any]:
        """The cache holds the prompt and `room` more tokens (not the whole context)."""
        cache = KVCache(self.cfg, 1, min(self.max_len, len(prompt) + max(1, room)), device=self.device)
        logits = self.model(torch.tensor([prompt], device=self.device), kv_cache=cache)
        return logits[0, -1], cache

    def step(self, token: int, state: Any) -> tuple[torch.Tensor, Any]:
        logits = self.model(torch.tensor([[token]], device=self.device), kv_cache=state)
        return logits[0, -1], state

    @torch.no_grad()
    def generate_many(
        self,
        prompts: Sequence[list[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seeds: Sequence[int] | None = None,
        stop_ids: Sequence[int] | None = None,
        stop_text: Sequence[str] = (),
        batch_size: int = 1,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> list[list[int]]:
        """Batches of `batch_size` prompts of similar length (longest first, as lm-eval's `hf` sorts
        them: little left padding) through `llmctl.model.generate.generate_batch`, one generator per
        prompt (seeds[i]), so a prompt's tokens do not depend on the batch it is in."""
        seeds = list(seeds) if seeds is not None else [0] * len(prompts)
        stops = tuple(self.codec.stop_ids if stop_ids is None else stop_ids)
        stop_fn = (lambda ids: any(s in self.codec.decode(ids) for s in stop_text)) if stop_text else None
        cut = [p[-max(1, self.max_len - max_new_tokens) :] for p in prompts]
        short = sum(len(c) < len(p) for c, p in zip(cut, prompts))
        if short:  # the same cut as lm-eval's hf (context keeps max_length - max_gen_toks tokens); said, not silent
            print(
                f"llmctl: {short} of {len(prompts)} prompts cut to their last {max(1, self.max_len - max_new_tokens)} "
                f"tokens to leave room for {max_new_tokens} new ones in a {self.max_len}-token context "
                "(lower the task's max_new_tokens to keep more of each prompt)",
                file=sys.stderr,
            )
        order = sorted(range(len(cut)), key=lambda i: (-len(cut[i]), i))
        out: list[list[int]] = [[] for _ in cut]
        bs = max(1, batch_size)
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            gens = [torch.Generator(device=self.device).manual_seed(seeds[i]) for i in idx]
            g = generate_batch(
                self.model,
                [cut[i] for i in idx],
                max_new_tokens,
                temperature,
                top_k or None,
                top_p if top_p < 1.0 else None,
                generator=gens,
                stop_ids=stops,
                pad_id=self.tokenizer.pad_id,
                stop_fn=stop_fn,
            )
            for i, t in zip(idx, g.tokens):
                out[i] = t
            if on_batch:
                on_batch(len(idx), g.new_tokens)
        return out


# ----------------------------------------------------------------------------- Hugging Face dirs


class HFLM(LM):
    """transformers AutoModelForCausalLM + AutoTokenizer from a local directory (offline)."""

    def __init__(self, path: str | Path, device: str = "cpu", tokenizer_dir: str | Path | None = None):
        import transformers  # transformers: only for Hugging Face dirs, kept out of the llmctl checkpoint path
        from transformers import AutoModelForCausalLM, AutoTokenizer  # likewise

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.path = Path(path)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32, local_files_only=True)
            self.tok = AutoTokenizer.from_pretrained(tokenizer_dir or self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: cannot load as a Hugging Face model ({str(e).splitlines()[0]})") from None
        self.model.to(device).eval()
        self.device = torch.device(device)
        eos = self.tok.eos_token_id
        if eos is None:
            raise UsageError(f"{path}: tokenizer has no eos token")
        vocab = self.tok.get_vocab()
        stops = (eos, *(vocab[t] for t in ("<|end|>", "<|im_end|>", "<|eot_id|>") if t in vocab))  # end of a chat turn
        self.codec = TextCodec(
            lambda t: self.tok.encode(t, add_special_tokens=False),
            lambda ids: self.tok.decode(list(ids), skip_special_tokens=True),
            eos,
            stops,
            "",
            self.tok.bos_token_id,
            self._chat if self.tok.chat_template else None,
            self._chat_text if self.tok.chat_template else None,
            self._encode_special,
            self.tok.chat_template or "",
        )
        mc = self.model.config
        self.max_len = int(getattr(mc, "max_position_embeddings", None) or getattr(mc, "n_positions", 2048))
        self.name = str(self.path)
        w = sorted(self.path.glob("*.safetensors")) or sorted(self.path.glob("*.bin"))
        self._fp = fingerprint_file(w[0]) if w else ""

    def lineage(self) -> dict[str, Any]:
        return {"path": str(self.path.resolve()), "stage": "hf-model", "fingerprint": self._fp}

    def _chat(self, messages: list[dict[str, str]]) -> list[int]:
        # The template writes its markers as text, so they must be parsed as special tokens even when the
        # tokenizer keeps special-token strings typed in text as text (split_special_tokens, as an llmctl
        # export does); sanitize_control_tokens (transformers >= 5) keeps markers typed in messages as text.
        tok = self.tok
        split = getattr(tok, "split_special_tokens", False)
        tok.split_special_tokens = False
        try:
            try:
                ids = tok.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, sanitize_control_tokens=True
                )
            except (ValueError, NotImplementedError):  # a tokenizer that cannot sanitize
                ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        finally:
            tok.split_special_tokens = split
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def _chat_text(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def _encode_special(self, text: str) -> list[int]:
        tok = self.tok
        split = getattr(tok, "split_special_tokens", False)
        tok.split_special_tokens = False
        try:
            return list(tok.encode(text, add_special_tokens=False))
        finally:
            tok.split_special_tokens = split

    def logits(self, ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        # Right padding with a full mask: a causal model's real positions never see the pads, and a
        # mask of all ones keeps transformers on the same (causal) kernel for every batch.
        return self.model(input_ids=ids, use_cache=False).logits.float()

    def start(self, prompt: list[int], room: int = 0) -> tuple[torch.Tensor, Any]:
        o = self.model(input_ids=torch.tensor([prompt], device=self.device), use_cache=True)
        return o.logits[0, -1].float(), o.past_key_values

    def step(self, token: int, state: Any) -> tuple[torch.Tensor, Any]:
        o = self.model(input_ids=torch.tensor([[token]], device=self.device), past_key_values=state, use_cache=True)
        return o.logits[0, -1].float(), o.past_key_values


def load_lm(path: str | Path, device: str = "cpu", tokenizer_dir: str | Path | None = None) -> LM:
    """An llmctl checkpoint (or run dir) or a Hugging Face model directory."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such model directory")
    if is_hf_dir(p):
        return HFLM(p, device, tokenizer_dir)
    return LlmctlLM(p, device, tokenizer_dir)
