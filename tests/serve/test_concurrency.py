"""Many clients at once share the running batch: each answer is the one it gets alone."""

from __future__ import annotations

import http.client
import json
import threading
import time

import openai
from serve_helpers import client, health, live_server

WORDS = "the cat sat on a mat and then a little dog ran to the park with a red ball".split()


def jobs() -> list[tuple[str, int]]:
    """16 prompts of 1..16 words with 4..34 new tokens."""
    return [(" ".join(WORDS[: 1 + i]), 4 + (i * 7) % 31) for i in range(16)]


def test_sixteen_concurrent_clients_get_their_lone_answers(served):
    url, _ = served
    c = client(url)
    alone = [
        c.completions.create(model="tiny", prompt=p, max_tokens=n, temperature=0).choices[0].text for p, n in jobs()
    ]
    got: list = [None] * 16
    barrier = threading.Barrier(17)

    def one(i: int, p: str, n: int) -> None:
        barrier.wait()
        got[i] = client(url).completions.create(model="tiny", prompt=p, max_tokens=n, temperature=0).choices[0].text

    # and a streaming client that reads two chunks and hangs up mid-answer
    def quitter() -> None:
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
        body = {"model": "tiny", "prompt": "a long story", "max_tokens": 400, "temperature": 0, "stream": True}
        barrier.wait()
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.readline(), r.readline(), r.readline()
        conn.close()

    threads = [threading.Thread(target=one, args=(i, p, n)) for i, (p, n) in enumerate(jobs())]
    threads.append(threading.Thread(target=quitter))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert got == alone
    deadline = time.time() + 5  # the quitter's 400-token answer was cancelled, not run to the end
    while health(url)["running"] and time.time() < deadline:
        time.sleep(0.02)
    assert health(url) == {"status": "ok", "running": 0, "queued": 0}


def test_a_full_queue_answers_429_and_then_serves(checkpoint):
    with live_server(checkpoint, max_running=1, max_queued=1) as (url, _):
        codes: list = []
        barrier = threading.Barrier(5)

        def one() -> None:
            barrier.wait()
            try:
                client(url).completions.create(model="tiny", prompt="a cat", max_tokens=300, temperature=0)
                codes.append(200)
            except openai.RateLimitError as e:
                assert e.body["type"] == "rate_limit_exceeded" and "retry later" in e.body["message"]
                codes.append(429)

        threads = [threading.Thread(target=one) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert codes.count(429) >= 2 and codes.count(200) >= 2, codes
        r = client(url).completions.create(model="tiny", prompt="a cat", max_tokens=3, temperature=0)
        assert r.choices[0].finish_reason in ("length", "stop")


def test_a_client_that_goes_away_frees_its_slot(served):
    url, server = served
    body = {"model": "tiny", "prompt": "a long story", "max_tokens": 480, "temperature": 0}
    full = client(url).completions.create(**body)
    assert full.usage.completion_tokens == 480  # this prompt runs to the limit
    before = server.engine.generated
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    r = conn.getresponse()
    r.readline(), r.readline()
    conn.close()
    # non-streamed: the client times out and closes the connection
    try:
        client(url).with_options(timeout=0.3).completions.create(**body)
    except openai.APITimeoutError:
        pass
    deadline = time.time() + 5
    while health(url)["running"] and time.time() < deadline:
        time.sleep(0.02)
    assert health(url)["running"] == 0
    assert server.engine.generated - before < 480  # both were cut short: together less than one whole answer
