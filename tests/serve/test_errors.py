"""Every bad request gets OpenAI-style error JSON and a 4xx status; the next good request succeeds."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest
from serve_helpers import CTX, client, live_server

GOOD = {"model": "tiny", "prompt": "a cat", "max_tokens": 3, "temperature": 0}


def post(url: str, body: bytes | dict, path: str = "/v1/completions", headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


BAD = [
    ("malformed JSON", b'{"model": "tiny", "prompt": ', 400, None),
    ("max_tokens of the wrong type", {**GOOD, "max_tokens": "ten"}, 400, "max_tokens"),
    ("n of the wrong type", {**GOOD, "n": "x"}, 400, "n"),
    ("negative temperature", {**GOOD, "temperature": -1}, 400, "temperature"),
    ("max_tokens over the context", {**GOOD, "max_tokens": CTX + 1}, 400, "max_tokens"),
    ("prompt longer than the context", {**GOOD, "prompt": [5] * (CTX + 1)}, 400, "prompt"),
    ("prompt + max_tokens over the context", {**GOOD, "prompt": [5] * (CTX - 2), "max_tokens": 3}, 400, "max_tokens"),
    ("token id outside the vocabulary", {**GOOD, "prompt": [1, 99999]}, 400, "prompt"),
    ("unknown model", {**GOOD, "model": "gpt-5"}, 404, "model"),
    ("missing prompt", {"model": "tiny"}, 400, "prompt"),
    ("n over the limit", {**GOOD, "n": 99}, 400, "n"),
    (
        "an unknown field of any type is ignored, a known one is checked",
        {**GOOD, "foo": {"x": 1}, "echo": "loud"},
        400,
        "echo",
    ),
]


@pytest.mark.parametrize("what,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_request_then_a_good_one(served, what, body, status, param):
    url, _ = served
    code, err = post(url, body)
    assert code == status, err
    assert set(err["error"]) == {"message", "type", "param", "code"} and err["error"]["message"]
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["param"] == param
    code, ok = post(url, GOOD)
    assert code == 200 and ok["choices"][0]["finish_reason"] in ("stop", "length")


def test_chat_errors_unknown_route_and_the_openai_client(served):
    url, _ = served
    code, err = post(url, {"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, "/v1/chat/completions")
    assert code == 400 and err["error"]["param"].startswith("messages")
    code, err = post(url, {"model": "tiny", "messages": []}, "/v1/chat/completions")
    assert code == 400
    code, err = post(url, GOOD, "/v1/nothing")
    assert code == 404 and err["error"]["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError) as e:
        client(url).completions.create(model="nope", prompt="a", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client(url).completions.create(model="tiny", prompt="a", max_tokens=CTX * 2)
    assert "maximum context length is 512 tokens" in e.value.body["message"]
    assert client(url).completions.create(**GOOD).choices


def test_api_key_and_body_limit(checkpoint):
    with live_server(checkpoint, api_key="sekret", max_body=2000) as (url, _):
        code, err = post(url, GOOD)
        assert code == 401 and err["error"]["code"] == "invalid_api_key"
        code, err = post(url, GOOD, headers={"Authorization": "Bearer wrong"})
        assert code == 401
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").completions.create(**GOOD)
        code, err = post(url, {**GOOD, "prompt": "x" * 5000}, headers={"Authorization": "Bearer sekret"})
        assert code == 413 and "larger than 2000 bytes" in err["error"]["message"]
        with urllib.request.urlopen(url + "/health") as r:  # no key needed
            assert json.loads(r.read())["status"] == "ok"
        assert client(url, "sekret").completions.create(**GOOD).choices[0].text is not None
