"""`llmctl serve` against `transformers serve` on the same model and prompts: output tokens/s and time
to first token at 1, 8 and 32 concurrent streaming clients (CPU, same thread count for both).

    python benchmarks/serve.py --model out/demo/sft --threads 2
    python benchmarks/serve.py --model CKPT --clients 1 2 --requests 2 --max-tokens 8 --no-continuous  # a smoke run

The model (an llmctl checkpoint) is exported with `llmctl export` for transformers. Each client sends
greedy streamed /v1/completions requests (prompts: TinyStories openings) one after another until
the run has `--requests` x clients answers; output tokens are the answers re-tokenized with the
model's tokenizer (the same count for both servers), TTFT is the time to the first non-empty chunk.
transformers serve runs with and without --continuous-batching; the table shows both.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer none"}
ROOT = Path(__file__).resolve().parent.parent
STORIES = ROOT / "examples" / "text" / "tinystories.jsonl.gz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as r:
                json.loads(r.read())
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url}: not ready after {timeout} s")


def prompts(n: int) -> list[str]:
    """n story openings of 8 to 31 words."""
    with gzip.open(STORIES, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"].split() for _, line in zip(range(n), f)]
    return [" ".join(w[: 8 + (i * 13) % 24]) for i, w in enumerate(texts)]


def load(url: str, model: str, texts: list[str], clients: int, max_tokens: int, count) -> dict:
    """`clients` threads, each streaming requests from the shared list until it is empty."""
    todo = list(enumerate(texts))
    lock = threading.Lock()
    ttft, tokens, errors = [], [], []

    def worker() -> None:
        try:
            work()
        except Exception as e:  # reported after the run
            errors.append(e)

    def work() -> None:
        while True:
            with lock:
                if not todo:
                    return
                _, p = todo.pop()
            body = {"model": model, "prompt": p, "max_tokens": max_tokens, "temperature": 0, "stream": True}
            req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(), HEADERS)
            t0, first, text = time.perf_counter(), None, ""
            with urllib.request.urlopen(req, timeout=600) as r:
                for raw in r:  # server-sent events; strict=False: a peer may send raw control characters
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    ev = json.loads(line[6:], strict=False)
                    piece = ev["choices"][0].get("text", "") if ev.get("choices") else ""
                    if piece and first is None:
                        first = time.perf_counter() - t0
                    text += piece or ""
            with lock:
                ttft.append(first if first is not None else time.perf_counter() - t0)
                tokens.append(count(text))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    q = sorted(ttft)
    return {
        "tok_s": sum(tokens) / wall,
        "ttft_med": statistics.median(q),
        "ttft_p90": q[min(len(q) - 1, int(0.9 * len(q)))],
        "tokens": sum(tokens),
        "wall": wall,
    }


def run_server(cmd: list[str], env: dict, url: str, name: str, args, model: str, count) -> dict:
    log = open(Path(tempfile.gettempdir()) / f"bench_serve_{name}.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc)
        load(url, model, prompts(2), 1, 4, count)  # warm-up
        out = {}
        for n in args.clients:
            out[n] = load(url, model, prompts(max(args.min_requests, args.requests * n)), n, args.max_tokens, count)
            r = out[n]
            print(
                f"{name:>22} clients {n:3d}: {r['tok_s']:7.1f} tok/s  TTFT median {r['ttft_med']:.3f} s  p90 {r['ttft_p90']:.3f} s",
                flush=True,
            )
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an llmctl checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--no-continuous", action="store_true", help="skip transformers serve --continuous-batching")
    args = ap.parse_args()
    from transformers import AutoTokenizer  # only to count tokens the same way for both servers

    from llmctl.export.hf import export_hf

    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    hf = export_hf(args.model, work / "hf")
    tok = AutoTokenizer.from_pretrained(hf)
    count = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    threads = str(args.threads)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    results = {}
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llmctl",
        "serve",
        args.model,
        "--port",
        str(port),
        "--threads",
        threads,
        "--max-running",
        str(max(args.clients)),
        "--max-queued",
        "1024",
        "--model-name",
        "m",
    ]
    results["llmctl serve"] = run_server(cmd, env, f"http://127.0.0.1:{port}", "llmctl serve", args, "m", count)
    if not args.no_transformers:
        tf = [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())"]
        for cb in [False] if args.no_continuous else [False, True]:
            port = free_port()
            name = "transformers serve" + (" --cb" if cb else "")
            cmd = [
                *tf,
                "serve",
                str(hf),
                "--device",
                "cpu",
                "--dtype",
                "float32",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            cmd.append("--continuous-batching" if cb else "--no-continuous-batching")
            try:
                results[name] = run_server(cmd, env, f"http://127.0.0.1:{port}", name, args, str(hf), count)
            except (SystemExit, OSError, ValueError, KeyError) as e:
                print(f"{name}: failed ({e})", flush=True)
    print("\n| server | " + " | ".join(f"{n} clients: tok/s, TTFT med" for n in args.clients) + " |")
    print("|---|" + "---|" * len(args.clients))
    for name, r in results.items():
        print(
            f"| {name} | " + " | ".join(f"{r[n]['tok_s']:.1f}, {r[n]['ttft_med']:.2f} s" for n in args.clients) + " |"
        )
    peers = [r for k, r in results.items() if k != "llmctl serve"]
    for n in args.clients:
        if peers:
            best = max(p[n]["tok_s"] for p in peers)
            print(f"clients {n}: llmctl / best transformers serve = {results['llmctl serve'][n]['tok_s'] / best:.2f}x")
    print(f"(CPU: {os.cpu_count()} cores, {threads} threads; model {args.model}; max_tokens {args.max_tokens})")


if __name__ == "__main__":
    main()
