"""Commands: llmctl serve (an OpenAI-compatible HTTP server) and llmctl chat (a terminal chat)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmctl.cli.app import app
from llmctl.errors import UsageError

LOCAL = ("127.0.0.1", "localhost", "::1")


def _engine(model: str, tokenizer: str | None, max_running: int, max_queued: int, threads: int | None):
    # torch, fastapi: kept out of --help
    import torch

    from llmctl.serve.engine import Engine
    from llmctl.serve.load import load_model

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m, codec, path = load_model(model, tokenizer, device)
    return Engine(m, codec.decode, max_running, max_queued), codec, path


@app.command("serve")
def serve_cmd(
    model: Annotated[
        str, typer.Argument(help="An llmctl checkpoint or run directory, or a Hugging Face Llama directory.")
    ],
    host: Annotated[str, typer.Option(help="Address to bind (localhost only unless told otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    model_name: Annotated[
        Optional[str], typer.Option("--model-name", help="The model id clients send (default: the directory's name).")
    ] = None,
    api_key: Annotated[
        Optional[str], typer.Option("--api-key", envvar="LLMCTL_API_KEY", help="Require 'Authorization: Bearer KEY'.")
    ] = None,
    max_running: Annotated[
        int, typer.Option("--max-running", min=1, help="Sequences generated at once (KV-cache slots).")
    ] = 32,
    max_queued: Annotated[
        int, typer.Option("--max-queued", min=0, help="Requests waiting for a slot; past it the answer is 429.")
    ] = 64,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", min=1, help="Largest request body (413 past it).")
    ] = 4 * 1024 * 1024,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
    tokenizer: Annotated[
        Optional[str], typer.Option("--tokenizer", "-t", help="Tokenizer dir (default: the checkpoint's).")
    ] = None,
) -> None:
    """Serve MODEL over OpenAI's HTTP API (/v1/completions, /v1/chat/completions, /v1/models, /health)."""
    import uvicorn  # uvicorn, fastapi, torch: kept out of --help

    from llmctl.serve.app import Server

    engine, codec, path = _engine(model, tokenizer, max_running, max_queued, threads)
    name = model_name or Path(path).name
    if host not in LOCAL and not api_key:
        print(
            f"llmctl: warning: serving on {host} without --api-key: anyone who can reach it can use it", file=sys.stderr
        )
    server = Server(engine, codec, name, aliases=(model, path), api_key=api_key, max_body=max_body_bytes)
    typer.echo(f"serving {path} as '{name}' on http://{host}:{port}/v1 (context {engine.ctx}, {max_running} slots)")
    try:
        uvicorn.run(server.app, host=host, port=port, log_level="warning")
    finally:
        engine.close()


@app.command("chat")
def chat_cmd(
    model: Annotated[Optional[str], typer.Argument(help="An llmctl checkpoint (in-process); or give --url.")] = None,
    url: Annotated[Optional[str], typer.Option("--url", help="A running server, e.g. http://127.0.0.1:8000.")] = None,
    api_key: Annotated[
        Optional[str], typer.Option("--api-key", envvar="LLMCTL_API_KEY", help="The server's key.")
    ] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="0 = greedy.")] = 0.7,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=1, help="Longest answer.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed (default: a new one each answer).")] = None,
    tokenizer: Annotated[
        Optional[str], typer.Option("--tokenizer", "-t", help="Tokenizer dir (default: the checkpoint's).")
    ] = None,
) -> None:
    """Chat with a model in the terminal: /reset, /system TEXT, /temperature X, /exit; Ctrl-C stops an answer."""
    if (model is None) == (url is None):
        raise UsageError("give a MODEL directory or --url of a running server (one of them)")
    from llmctl.serve.chat import LocalChat, RemoteChat, chat_loop  # torch: kept out of --help

    engine = None
    if url:
        try:
            backend = RemoteChat(url, api_key)
        except OSError as e:
            raise UsageError(f"{url}: cannot reach the server ({e})") from None
    else:
        engine, codec, _ = _engine(model, tokenizer, 1, 1, None)
        backend = LocalChat(engine, codec)
    try:
        import readline  # noqa: F401  (line editing and history for input(); stdlib, absent on some platforms)
    except ImportError:
        pass
    try:
        chat_loop(
            backend,
            write=lambda s: print(s, end="", flush=True),
            system=system,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
        )
    finally:
        if engine is not None:
            engine.close()
