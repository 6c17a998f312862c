"""The serving engine: requests that join a running batch get the tokens of `generate()` alone."""

from __future__ import annotations

import queue
import time

import torch

from llmctl.model.generate import generate
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.serve.engine import Engine, Params


def peaky_model() -> Transformer:
    """A random model with clear favourites (no near-ties between its top two logits)."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=60, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=96))
    for p in m.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    return m.eval()


def run(engine: Engine, jobs: list[tuple[list[int], Params]], stagger: float = 0.0) -> list[list[list[int]]]:
    """Submit every job (optionally a little apart, so later ones join a running batch); tokens per choice."""
    q: queue.Queue = queue.Queue()
    for k, (prompt, params) in enumerate(jobs):
        engine.submit(prompt, params, lambda ev, k=k: q.put((k, ev)))
        time.sleep(stagger)
    out = [[[] for _ in range(p.n)] for _, p in jobs]
    left = sum(p.n for _, p in jobs)
    while left:
        k, ev = q.get(timeout=30)
        if ev[0] == "token":
            out[k][ev[1]].append(ev[2])
        elif ev[0] == "done":
            left -= 1
        elif ev[0] == "error":
            raise AssertionError(ev[1])
    return out


def test_staggered_greedy_and_seeded_requests_equal_generate_alone():
    m = peaky_model()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 60, (int(n),), generator=g).tolist() for n in torch.randint(1, 40, (16,), generator=g)]
    lengths = [int(x) for x in torch.randint(1, 30, (16,), generator=g)]
    engine = Engine(m, decode=lambda ids: "", max_running=8, max_queued=64)
    try:
        jobs = [(p, Params(max_tokens=n, temperature=0)) for p, n in zip(prompts, lengths)]
        got = run(engine, jobs, stagger=0.005)
        assert [o[0] for o in got] == [generate(m, p, n, temperature=0) for p, n in zip(prompts, lengths)]
        sampled = [(p, Params(max_tokens=12, temperature=1.0, top_k=20, seed=7 + i)) for i, p in enumerate(prompts[:6])]
        got = run(engine, sampled)
        want = [generate(m, p, 12, temperature=1.0, top_k=20, seed=7 + i) for i, p in enumerate(prompts[:6])]
        assert [o[0] for o in got] == want
        # n=3: choice j draws from seed + j, as three separate `generate --seed` runs would
        (three,) = run(engine, [(prompts[0], Params(max_tokens=10, temperature=1.0, seed=40, n=3))])
        assert three == [generate(m, prompts[0], 10, temperature=1.0, seed=40 + j) for j in range(3)]
        assert engine.stats() == {"running": 0, "queued": 0}
    finally:
        engine.close()


def test_stop_ids_and_cancel_free_slots():
    m = peaky_model()
    p = [5, 6, 7]
    full = generate(m, p, 20, temperature=0)
    engine = Engine(m, decode=lambda ids: "", max_running=2)
    try:
        (got,) = run(engine, [(p, Params(max_tokens=20, temperature=0, stop_ids=(full[4],)))])
        assert got[0] == full[: full.index(full[4])]
        q: queue.Queue = queue.Queue()
        long = engine.submit(p, Params(max_tokens=90, temperature=0), q.put)
        q.get(timeout=10)
        assert engine.stats()["running"] == 1
        long.cancel()
        deadline = time.time() + 5
        while engine.stats()["running"] and time.time() < deadline:
            time.sleep(0.01)
        assert engine.stats()["running"] == 0
    finally:
        engine.close()
