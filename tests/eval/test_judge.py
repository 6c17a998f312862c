"""`--task judge`: an in-process judge, the same judge model served over HTTP (a FastAPI app on
127.0.0.1), a length-preferring judge, garbage replies (counted skips) and a dead URL (one line)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from eval_helpers import tiny_checkpoint

from llmctl.eval.runner import EvalConfig, run_eval
from llmctl.eval.tasks.judge import _LocalJudge, parse_verdict
from llmctl.store.dataset import Dataset

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

PROMPTS = [
    "Tell a short story about a cat.",
    "What is the color of the sky?",
    "Name three fruits.",
    "Write one sentence about a dog and a ball.",
    "Why do birds sing?",
    "Describe a rainy day.",
    "Tell me about the sea.",
    "What do children like to play?",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("judge")
    m = tiny_checkpoint(tmp / "m", tmp, seed=1, max_seq_len=256)
    b = tiny_checkpoint(tmp / "b", tmp, seed=2, max_seq_len=256)
    j = tiny_checkpoint(tmp / "j", tmp, seed=3, max_seq_len=512)
    p = tmp / "prompts.jsonl"
    p.write_text("".join(json.dumps({"instruction": x}) + "\n" for x in PROMPTS))
    return m, b, j, p


class Server:
    """A FastAPI app with OpenAI's /v1/models and /v1/chat/completions, served by uvicorn on 127.0.0.1."""

    def __init__(self, reply):
        api = fastapi.FastAPI()
        self.requests = []

        @api.get("/v1/models")
        def models():
            return {"object": "list", "data": [{"id": "judge", "object": "model"}]}

        @api.post("/v1/chat/completions")
        def chat(body: dict):
            self.requests.append(body)
            text = reply(body["messages"][-1]["content"], len(self.requests))
            return {
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            }

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(api, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def _cfg(m, b, p, **kw):
    cfg = EvalConfig(tasks=["judge"], batch_size=4)
    cfg.judge.prompts, cfg.judge.baseline, cfg.judge.max_new_tokens = str(p), str(b), 12
    for k, v in kw.items():
        setattr(cfg.judge, k, v)
    return cfg


def _rows(m):
    return {r["metric"]: (r["value"], r["stderr"], r["n"]) for r in m["stats"]["results"]}


def _answers_of(prompt):
    a = re.search(r"Answer A:\n(.*)\n\nAnswer B:\n", prompt, re.S).group(1)
    b = re.search(r"Answer B:\n(.*)\n\nReply with", prompt, re.S).group(1)
    return a, b


def test_in_process_and_http_judge_agree(models, tmp_path):
    m, b, j, p = models
    local = run_eval(m, tmp_path / "local", _cfg(m, b, p, judge=str(j)))
    judge = _LocalJudge(str(j), "cpu", 4)
    with Server(lambda text, k: f"Verdict follows.\n{judge([text])[0]}") as srv:
        remote = run_eval(m, tmp_path / "http", _cfg(m, b, p, judge_url=srv.url, judge_model="tiny"))
    assert len(srv.requests) == 2 * len(PROMPTS)
    assert srv.requests[0]["model"] == "tiny" and srv.requests[0]["temperature"] == 0
    assert _rows(local) == _rows(remote)
    s = Dataset.open(tmp_path / "http" / "_samples" / "judge").read_shard(0).to_pylist()
    # the metrics from the per-pair verdicts, recomputed here
    prefs = [(r["preference_model_first"] + r["preference_model_second"]) / 2 for r in s]
    rows = _rows(remote)
    assert rows["win_rate"][0] == pytest.approx(sum(x - 1 for x in prefs) / len(prefs))
    agree = [r["preference_model_first"] == r["preference_model_second"] for r in s]
    assert rows["judge_consistency"][0] == pytest.approx(sum(agree) / len(agree))
    assert rows["mean_len_model"][0] == pytest.approx(sum(len(r["output_model"]) for r in s) / len(s))
    assert rows["n_skipped"][0] == 0 and rows["judge_unparsed"][0] == 0
    assert "lc_win_rate" in rows
    # the order was swapped between the two requests of a pair
    first = _answers_of(srv.requests[0]["messages"][0]["content"])
    second = _answers_of(srv.requests[len(PROMPTS)]["messages"][0]["content"])
    assert first == second[::-1] == (s[0]["output_model"], s[0]["output_baseline"])


def test_length_preferring_judge_and_replaced_prompt(models, tmp_path):
    m, b, _, p = models
    tpl = tmp_path / "judge.txt"
    tpl.write_text("Q: {instruction}\n\nAnswer A:\n{output_a}\n\nAnswer B:\n{output_b}\n\nReply with A or B.\n")

    def longer(text, k):
        a, b_ = _answers_of(text)
        return "A" if len(a) > len(b_) else "B" if len(b_) > len(a) else "tie"

    with Server(longer) as srv:
        res = run_eval(m, tmp_path / "o", _cfg(m, b, p, judge_url=srv.url, prompt_file=str(tpl)))
    assert all(r["messages"][0]["content"].startswith("Q: ") for r in srv.requests)
    s = Dataset.open(tmp_path / "o" / "_samples" / "judge").read_shard(0).to_pylist()
    expect = [
        2.0
        if len(r["output_model"]) > len(r["output_baseline"])
        else 1.0
        if len(r["output_model"]) < len(r["output_baseline"])
        else 1.5
        for r in s
    ]
    assert [r["preference"] for r in s] == expect
    assert _rows(res)["judge_consistency"][0] == 1.0


def test_unparseable_replies_are_counted_skips(models, tmp_path):
    m, b, _, p = models
    with Server(lambda text, k: "A" if k % 4 == 1 else "I cannot decide between them.") as srv:
        res = run_eval(m, tmp_path / "o", _cfg(m, b, p, judge_url=srv.url))
    rows = _rows(res)
    n = len(PROMPTS)
    parsed_first = len([k for k in range(1, n + 1) if k % 4 == 1])
    parsed_second = len([k for k in range(n + 1, 2 * n + 1) if k % 4 == 1])
    assert rows["judge_unparsed"][0] == 2 * n - parsed_first - parsed_second
    s = Dataset.open(tmp_path / "o" / "_samples" / "judge").read_shard(0).to_pylist()
    judged = [r for r in s if r["preference"] is not None]
    assert rows["n_skipped"][0] == n - len(judged)
    assert rows["win_rate"][2] == len(judged)
    assert parse_verdict("hmm\nA or B") is None and parse_verdict("Final: tie") == "tie"


@pytest.mark.slow
def test_dead_url_is_one_line(models, tmp_path):
    m, b, _, p = models
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    out = tmp_path / "o"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmctl",
            "eval",
            str(m),
            "-o",
            str(out),
            "--task",
            "judge",
            "--prompts",
            str(p),
            "--baseline",
            str(b),
            "--judge-url",
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "does not answer" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
