"""Serve-test helpers: a tiny model with clear favourites, a live server on 127.0.0.1 (uvicorn in a thread), clients."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import openai
import torch
import uvicorn
from eval_helpers import save_tokenizer

from llmctl.model.checkpoint import save_checkpoint
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.serve.app import Server
from llmctl.serve.engine import Engine
from llmctl.serve.load import load_model

CTX = 512


def peaky_checkpoint(path: Path, tok_dir: Path) -> Path:
    """A random 2-layer model whose weights are pushed apart (+0.3 randn) so its top logits are far apart:
    greedy tokens then do not depend on float rounding of the batch they are computed in."""
    if not (tok_dir / "llmctl_tokenizer.json").is_file():
        save_tokenizer(tok_dir)
    cfg = ModelConfig(vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=CTX)
    torch.manual_seed(0)
    m = Transformer(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return save_checkpoint(path, m, cfg, tokenizer_dir=tok_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(checkpoint: Path, name: str = "tiny", **kw):
    """Yield (base url, Server) for a server in a thread; engine limits and api_key come from kw."""
    limits = {k: kw.pop(k) for k in ("max_running", "max_queued") if k in kw}
    model, codec, path = load_model(str(checkpoint))
    engine = Engine(model, codec.decode, **limits)
    server = Server(engine, codec, name, aliases=(str(checkpoint), path), **kw)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(server.app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=uv.run, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 20
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if json.loads(r.read())["status"] == "ok":
                    break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield url, server
    finally:
        uv.should_exit = True
        th.join(timeout=10)
        engine.close()


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=5) as r:
        return json.loads(r.read())


def client(url: str, key: str = "none") -> openai.OpenAI:
    """The real openai client, no retries (a 429 must reach the test)."""
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
