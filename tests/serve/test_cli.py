"""`llmctl serve` as a user starts it: a subprocess on a free port, with --api-key."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import openai
import pytest
from serve_helpers import client, free_port

from llmctl.cli import main
from llmctl.model.generate import generate_text


@pytest.mark.slow
def test_serve_command(checkpoint):
    port = free_port()
    cmd = [sys.executable, "-m", "llmctl", "serve", str(checkpoint), "--port", str(port), "--api-key", "k"]
    proc = subprocess.Popen([*cmd, "--max-running", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline
                time.sleep(0.2)
        with pytest.raises(openai.AuthenticationError):
            client(url).models.list()
        c = client(url, "k")
        assert [m.id for m in c.models.list().data] == [checkpoint.name]
        r = c.completions.create(model=checkpoint.name, prompt="The dog", max_tokens=12, temperature=0)
        assert r.choices[0].text == generate_text(checkpoint, "The dog", max_tokens=12, temperature=0)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"serving {checkpoint}" in out


def test_serve_refuses_a_non_llama_hugging_face_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    monkeypatch.setattr(sys, "argv", ["llmctl", "serve", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and "LlamaForCausalLM directories" in capsys.readouterr().err
