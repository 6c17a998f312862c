"""The OpenAI API with the real `openai` client against a live server."""

from __future__ import annotations

import subprocess
import sys

import pytest
from serve_helpers import client

from llmctl.eval.lm import LlmctlLM
from llmctl.model.generate import generate, generate_text

PROMPT = "Once upon a time there was a little"


def test_models_and_health(served):
    url, server = served
    ids = [m.id for m in client(url).models.list().data]
    assert ids == ["tiny"]


def test_greedy_completion_and_chat_equal_llmctl_generate(served, checkpoint):
    url, _ = served
    c = client(url)
    r = c.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0)
    assert r.choices[0].text == generate_text(checkpoint, PROMPT, max_tokens=24, temperature=0)
    lm = LlmctlLM(checkpoint)
    ids = lm.codec.encode(PROMPT)
    new = generate(lm.model, ids, 24, temperature=0, stop_ids=lm.codec.stop_ids)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(new))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    q = "What is a cat?"
    chat = c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": q}], max_tokens=30, temperature=0
    )
    assert chat.choices[0].message.content == generate_text(checkpoint, q, max_tokens=30, temperature=0, chat=True)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_greedy_chat_equals_the_generate_command(served, checkpoint):
    url, _ = served
    q = "Tell me about dogs."
    chat = client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": q}], max_tokens=30, temperature=0
    )
    cli = subprocess.run(
        [sys.executable, "-m", "llmctl", "generate", str(checkpoint), q, "--chat", "--temperature", "0", "-n", "30"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert chat.choices[0].message.content == cli.stdout.rstrip("\n")


def test_stream_concatenation_equals_the_answer(served):
    url, _ = served
    c = client(url)
    for seed in (None, 3):
        t = 0 if seed is None else 1.0
        whole = c.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=t, seed=seed)
        parts = list(
            c.completions.create(
                model="tiny",
                prompt=PROMPT,
                max_tokens=40,
                temperature=t,
                seed=seed,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(p.choices[0].text for p in parts if p.choices) == whole.choices[0].text
        assert [p.choices[0].finish_reason for p in parts if p.choices and p.choices[0].finish_reason] == [
            whole.choices[0].finish_reason
        ]
        assert parts[-1].usage.completion_tokens == whole.usage.completion_tokens
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story."}]
    whole = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=40, temperature=0)
    parts = list(c.chat.completions.create(model="tiny", messages=msgs, max_tokens=40, temperature=0, stream=True))
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == whole.choices[0].message.content


def test_n_choices_seeds_and_stop_strings(served):
    url, _ = served
    c = client(url)
    greedy = c.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0, n=3)
    assert len({ch.text for ch in greedy.choices}) == 1 and [ch.index for ch in greedy.choices] == [0, 1, 2]
    a = c.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=1.0, n=3, seed=5)
    b = c.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=1.0, n=3, seed=5)
    assert [x.text for x in a.choices] == [x.text for x in b.choices]
    assert len({x.text for x in a.choices}) == 3
    # choice j draws from seed + j: choice 1 of seed 5 is choice 0 of seed 6
    one = c.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=1.0, seed=6)
    assert one.choices[0].text == a.choices[1].text
    full = greedy.choices[0].text
    stop = full.strip().split()[2]
    cut = c.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop, "zzzz"])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = c.completions.create(model="tiny", prompt=PROMPT, max_tokens=20, temperature=0, stop=stop, stream=True)
    assert "".join(p.choices[0].text for p in streamed) == cut.choices[0].text
    # two prompts in one request: choice index = prompt * n + j
    two = c.completions.create(model="tiny", prompt=[PROMPT, "The dog"], max_tokens=5, temperature=0, n=2)
    assert [x.index for x in two.choices] == [0, 1, 2, 3] and two.choices[0].text == two.choices[1].text


def test_echo_logprobs_match_llmctl_eval(served, checkpoint):
    url, server = served
    ids = server.codec.encode("Once upon a time, a cat sat on the mat.")
    r = client(url).completions.create(model="tiny", prompt=ids, max_tokens=1, temperature=0, logprobs=1, echo=True)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None
    ctx, cont = ids[:4], ids[4:]
    ((want_sum, want_greedy),) = LlmctlLM(checkpoint).loglikelihood([(ctx, cont)], batch_size=1)
    got = lp.token_logprobs[len(ctx) : len(ids)]
    assert sum(got) == pytest.approx(want_sum, abs=1e-5)
    greedy = all(v == max(t.values()) for v, t in zip(got, lp.top_logprobs[len(ctx) : len(ids)]))
    assert greedy == want_greedy
