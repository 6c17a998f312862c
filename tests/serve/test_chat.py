"""`llmctl chat`'s loop driven with scripted input, in-process and against a live server (--url)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from serve_helpers import health

from llmctl.cli import main
from llmctl.eval.lm import LlmctlLM
from llmctl.model.generate import generate
from llmctl.serve.chat import LocalChat, RemoteChat, chat_loop
from llmctl.serve.engine import Engine

N = 20


def script(lines: list[str]):
    it = iter(lines)

    def read(prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


@pytest.fixture(scope="module")
def lm(checkpoint):
    return LlmctlLM(checkpoint)


def greedy(lm: LlmctlLM, msgs: list[dict]) -> str:
    ids = lm.codec.chat(msgs)
    return lm.codec.decode(generate(lm.model, ids, N, temperature=0, stop_ids=lm.codec.stop_ids))


def converse(backend, lm: LlmctlLM) -> None:
    out: list[str] = []
    lines = ["/temperature 0", "Hello there.", "What is a cat?", "/system Be kind.", "/reset", "Tell me a story."]
    history = chat_loop(backend, read=script(lines), write=out.append, max_tokens=N)
    text = "".join(out)
    u1, u2, u3 = ({"role": "user", "content": x} for x in ("Hello there.", "What is a cat?", "Tell me a story."))
    a1 = greedy(lm, [u1])
    a2 = greedy(lm, [u1, {"role": "assistant", "content": a1}, u2])  # the history goes with the next turn
    a3 = greedy(lm, [{"role": "system", "content": "Be kind."}, u3])  # /reset keeps the system prompt
    assert f"{a1}\n" in text and f"{a2}\n" in text and f"{a3}\n" in text
    assert "(temperature 0.0)" in text and "(conversation cleared)" in text and "(system prompt set)" in text
    assert history == [u3, {"role": "assistant", "content": a3}]


def test_in_process_chat(checkpoint, lm):
    engine = Engine(lm.model, lm.codec.decode, max_running=1, max_queued=1)
    try:
        converse(LocalChat(engine, lm.codec), lm)
        # Ctrl-C during an answer: that answer stops and is left out, the chat goes on
        assert interrupted(LocalChat(engine, lm.codec)) == []
        deadline = time.time() + 5
        while engine.stats()["running"] and time.time() < deadline:
            time.sleep(0.01)
        assert engine.stats()["running"] == 0
    finally:
        engine.close()


def interrupted(backend) -> list[dict]:
    """Ctrl-C at the first piece of an answer: the answer stops and is left out of the history."""
    out: list[str] = []

    def write(s: str) -> None:
        out.append(s)
        if len(out) == 3:  # the help line, the temperature line, then the first piece of the answer
            raise KeyboardInterrupt

    history = chat_loop(backend, read=script(["/temperature 1", "Hi!", "/exit"]), write=write)
    assert "[stopped]" in "".join(out)
    return history


def test_chat_against_a_server(served, lm):
    url, server = served
    converse(RemoteChat(url), lm)
    assert health(url)["running"] == 0
    assert interrupted(RemoteChat(url)) == []  # the closed connection cancels the answer on the server
    deadline = time.time() + 5
    while health(url)["running"] and time.time() < deadline:
        time.sleep(0.01)
    assert health(url)["running"] == 0


@pytest.mark.slow
def test_chat_command_in_a_subprocess(checkpoint, lm):
    p = subprocess.run(
        [sys.executable, "-m", "llmctl", "chat", str(checkpoint), "--temperature", "0", "--max-tokens", str(N)],
        input="What is a cat?\n/exit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert greedy(lm, [{"role": "user", "content": "What is a cat?"}]) in p.stdout


def test_chat_needs_a_model_or_a_url(checkpoint, monkeypatch, capsys):
    for argv in (["llmctl", "chat"], ["llmctl", "chat", str(checkpoint), "--url", "http://127.0.0.1:1"]):
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as e:
            main()
        assert e.value.code == 2 and "give a MODEL directory or --url" in capsys.readouterr().err
