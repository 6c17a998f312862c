"""Sampling from a trained model: temperature, top-k, top-p (nucleus, Holtzman et al. 2020), KV cache.

The prompt is run once (prefill) and each new token costs one single-token forward against the
cached keys and values: O(T) work per token instead of O(T^2) for re-running the whole prefix;
for the 10m preset at 256 tokens that is about 20x fewer FLOPs over a full generation.
Sampling draws from a seeded `torch.Generator`, so the same seed gives the same text.

`generate_batch` is the one engine: `llmctl generate`, eval's generative tasks (through
`LM.generate_many`) and `llmctl rl`'s rollouts all sample with it (left padding, a padding-aware
mask, per-row RoPE positions; see its docstring).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch

from llmctl.errors import UsageError
from llmctl.model.checkpoint import load_checkpoint
from llmctl.model.transformer import KVCache, Transformer
from llmctl.tokenizer.load import load_tokenizer


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set with mass >= top_p."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the top token is always kept)
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


@dataclass
class Generated:
    """What `generate_batch` returns: per row the new ids (stop id excluded) and whether it ended
    at a stop id (False: it hit the length limit), plus tokens made and seconds spent."""

    tokens: list[list[int]]
    ended: list[bool]
    stops: list[int | None]  # the stop id each row ended at (None: it hit the limit)
    new_tokens: int = 0
    seconds: float = 0.0
    forced: list[list[bool]] | None = None  # with a force_fn: per new id, whether force_fn fed it

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / max(self.seconds, 1e-9)


def _draw(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    gen: torch.Generator | Sequence[torch.Generator],
) -> torch.Tensor:
    """(B,) next ids: argmax at temperature 0, else one draw per row (from that row's generator when
    `gen` is a list, so a row samples what it would alone)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits if temperature == 1 else logits / temperature, top_k, top_p).softmax(-1)
    if isinstance(gen, torch.Generator):
        return torch.multinomial(probs, 1, generator=gen)[:, 0]
    # torch.multinomial draws one sample as argmax(p / q), q ~ Exp(1) from the generator; filling each
    # row's q from its own generator and dividing once gives the same ids (and leaves each generator
    # where multinomial would) without a multinomial call per row
    q = torch.empty_like(probs)
    for i, g in enumerate(gen):
        q[i].exponential_(1, generator=g)
    return (probs / q).argmax(-1)


@torch.no_grad()
def generate_batch(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    seed: int = 0,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    use_cache: bool = True,
    stop_fn: Callable[[list[int]], bool] | None = None,
    force_fn: Callable[[int, list[int]], list[int] | bool | Future | None] | None = None,
    wait_steps: int = 0,
    max_waits: int = 0,
) -> Generated:
    """Continue every prompt of a batch at once (the one engine of generate, eval and rl).

    Prompts of different lengths are left-padded to the longest; an attention mask hides the
    padding (a pad query sees only itself, so no row of softmax is empty) and RoPE positions
    count each row's own tokens from 0, so a row computes what it would alone up to float
    rounding (a greedy batch gives the tokens of one-at-a-time generation: tests/model/test_generate_batch.py).
    A batch without padding takes the causal kernel with no mask, exactly as a single prompt does.
    A row stops at a stop id (not returned) or after max_new_tokens, or when it fills the model's
    context, or when `stop_fn(row's new ids)` says so after a token (that token is kept: eval's stop
    strings); finished rows ride along until every row is done.

    `force_fn(i, row i's new ids)`, called after each sampled token of a running row, may return ids
    to feed that row next, one a step in place of its samples, while the other rows go on sampling
    (a tool's output); they count toward the row's limit and `Generated.forced` marks them. It
    returns None to go on sampling, False to end the row there (not at a stop id), or a
    `concurrent.futures.Future` of either (ids, non-empty, or False; a tool running in a thread):
    the row is then parked for exactly `wait_steps` steps, feeding nothing (a masked slot: no
    attention to it, no position used, no token counted) while the other rows go on sampling, and
    takes the future's result after them, waiting only if it is not ready by then. The number of
    parked steps does not depend on how long the work took, so the tokens do not either. At most
    `max_waits` parked calls a row (room in the KV cache); without a cache, a future is waited for
    at once."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt token per row")
    model.eval()
    p0 = next(model.parameters())
    device, ctx = p0.device, model.cfg.max_seq_len
    rows = [list(p)[-ctx:] for p in prompts]
    b, lens = len(rows), torch.tensor([len(r) for r in rows], device=device)
    width = int(lens.max())
    limit = [min(max_new_tokens, max(1, ctx - len(r))) for r in rows]
    steps = max(limit) if max_new_tokens > 0 else 0
    park = wait_steps if use_cache and force_fn is not None and max_waits > 0 else 0
    extra = park * max_waits  # cache slots for parked steps
    waits = [0] * b
    gen = generator if generator is not None else torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    ids = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, device=device)
    padded = bool((lens != width).any())
    valid = torch.zeros(b, width + steps + extra, dtype=torch.bool, device=device)  # keys a real token may attend to
    valid[:, :width] = torch.arange(width, device=device)[None] >= (width - lens)[:, None]
    positions = (torch.arange(width, device=device)[None] - (width - lens)[:, None]).clamp(min=0)
    cache = KVCache(model.cfg, b, width + steps + extra, device=device, dtype=p0.dtype) if use_cache else None
    last = torch.zeros(b, width, dtype=torch.bool, device=device)
    last[:, -1] = True  # the lm head at the last position only: (B, V), not (B, width, V)
    # the prompt runs once per distinct row (GRPO's G copies of a prompt): its logits and cached
    # keys/values are then copied to every row that repeats it
    first: dict[tuple[int, ...], int] = {}  # a distinct prompt -> the first row holding it
    inv = [first.setdefault(tuple(r), i) for i, r in enumerate(rows)]
    pre_cache, sel = cache, slice(None)
    if cache is not None and len(first) < b:
        sel = torch.tensor(list(first.values()), device=device)
        pre_cache = KVCache(model.cfg, len(first), width, device=device, dtype=p0.dtype)
    pre_ids = ids[sel]
    if padded:
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        eye = torch.eye(width, dtype=torch.bool, device=device)
        mask = ((causal & valid[sel][:, None, :width]) | eye)[:, None]
        logits = model(pre_ids, positions=positions[sel], kv_cache=pre_cache, attn_mask=mask, keep=last[sel])
    else:
        logits = model(pre_ids, kv_cache=pre_cache, keep=last[sel])
    if pre_cache is not cache:
        slot = {row: k for k, row in enumerate(first.values())}
        back = torch.tensor([slot[i] for i in inv], device=device)
        logits = logits[back]
        for full, part in zip(cache.k + cache.v, pre_cache.k + pre_cache.v):
            full[:, :, :width] = part[back]
        cache.pos = pre_cache.pos
    out: list[list[int]] = [[] for _ in range(b)]
    ended, done = [False] * b, [False] * b
    stopped: list[int | None] = [None] * b
    stops = set(int(s) for s in stop_ids)
    queue: list[list[int]] = [[] for _ in range(b)]  # ids force_fn gave a row, still to feed
    forced: list[list[bool]] | None = [[] for _ in range(b)] if force_fn is not None else None
    pending: list[Future | None] = [None] * b  # a parked row's future
    idle = [0] * b  # parked steps still to go
    fed = [0] * b  # real tokens fed after the prompt (a parked step feeds none)
    parked_any = False
    live = list(range(b))  # the rows the cache holds: without force_fn, those not finished
    for t in range(steps + extra):
        nxt = _draw(logits.float(), temperature, top_k, top_p, gen)
        drawn = nxt.tolist()
        real = [True] * b
        for i, tok in enumerate(drawn):
            if done[i]:
                continue
            if pending[i] is not None:
                if idle[i] > 0:
                    idle[i] -= 1
                    drawn[i], real[i] = pad_id, False
                    continue
                res, pending[i] = pending[i].result(), None
                if res is False or not res:
                    done[i] = True
                    continue
                queue[i] = list(res)
            if forced is not None and queue[i]:
                drawn[i] = queue[i].pop(0)
                out[i].append(drawn[i])
                forced[i].append(True)
                done[i] = len(out[i]) >= limit[i]
                continue
            if tok in stops:
                done[i] = ended[i] = True
                stopped[i] = tok
                continue
            out[i].append(tok)
            done[i] = len(out[i]) >= limit[i] or (stop_fn is not None and stop_fn(out[i]))
            if forced is not None:
                forced[i].append(False)
                if not done[i]:
                    feed = force_fn(i, out[i])
                    if isinstance(feed, Future):
                        if park and waits[i] < max_waits:
                            pending[i], idle[i], parked_any = feed, park, True
                            waits[i] += 1
                            continue
                        feed = feed.result()
                    if feed is False:
                        done[i] = True
                    elif feed:
                        queue[i] = list(feed)
        if all(done) or t == steps + extra - 1:
            break
        if forced is not None:
            nxt = torch.tensor(drawn, device=device)
        nxt = nxt.masked_fill(torch.tensor(done, device=device), pad_id)[:, None]
        valid[:, width + t] = torch.tensor(real, device=device)
        pos = (lens + torch.tensor(fed, device=device))[:, None]
        fed = [f + r for f, r in zip(fed, real)]
        if cache is None:
            ids = torch.cat([ids, nxt], dim=1)
            pos_all = (torch.arange(ids.size(1), device=device)[None] - (width - lens)[:, None]).clamp(min=0)
            if padded:
                n = ids.size(1)
                causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
                m = ((causal & valid[:, None, :n]) | torch.eye(n, dtype=torch.bool, device=device))[:, None]
                logits = model(ids, positions=pos_all, attn_mask=m)[:, -1]
            else:
                logits = model(ids)[:, -1]
        else:
            if force_fn is None and any(done[i] for i in live):  # finished rows leave the cache
                keep = torch.tensor([k for k, i in enumerate(live) if not done[i]], device=device)
                cache.k, cache.v = [x[keep] for x in cache.k], [x[keep] for x in cache.v]
                live = [i for i in live if not done[i]]
            rows_t = slice(None) if len(live) == b else torch.tensor(live, device=device)
            if padded or parked_any:
                mask = valid[rows_t][:, None, None, : width + t + 1]
                new = model(nxt[rows_t], positions=pos[rows_t], kv_cache=cache, attn_mask=mask)[:, -1]
            else:
                new = model(nxt[rows_t], kv_cache=cache)[:, -1]
            if len(live) == b:
                logits = new
            else:  # a finished row's logits are stale; its draw (the same random numbers) is ignored
                logits[rows_t] = new
    return Generated(out, ended, stopped, sum(len(o) for o in out), time.perf_counter() - t0, forced)


@torch.no_grad()
def generate(
    model: Transformer,
    prompt_ids: list[int],
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop_ids: tuple[int, ...] = (),
    use_cache: bool = True,
) -> list[int]:
    """New token ids after `prompt_ids` (stops early at a stop id, which is not returned): a batch of one."""
    if not prompt_ids:
        raise ValueError("generate needs at least one prompt token")
    return generate_batch(
        model,
        [prompt_ids],
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        seed=seed,
        stop_ids=stop_ids,
        use_cache=use_cache,
    ).tokens[0]


def prompt_ids(tok, prompt: str, chat: bool = False) -> list[int]:
    """The ids generation starts from: plain text, or one user turn in the chat template."""
    if chat:
        return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    return tok.encode(prompt) or [tok.eos_id]


def generate_text(
    checkpoint: str | Path,
    prompt: str,
    max_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
    chat: bool = False,
) -> str:
    """Load a checkpoint and its tokenizer, continue `prompt`, return only the new text.

    With `chat=True` the prompt is one user turn in the chat template SFT, reward and DPO train on
    (`apply_chat_template`, ending with the assistant tag: the model's own template for a Hugging Face
    directory), and the reply stops at the end of the turn.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _, tok_dir, _ = load_checkpoint(checkpoint, device=device, tokenizer_dir=tokenizer_dir)
    if tok_dir is None:
        raise UsageError(f"{checkpoint}: has no tokenizer; pass --tokenizer")
    tok = load_tokenizer(tok_dir)
    ids = prompt_ids(tok, prompt, chat)
    new = generate(model, ids, max_tokens, temperature, top_k, top_p, seed, stop_ids=tok.stop_ids)
    return tok.decode(new)
