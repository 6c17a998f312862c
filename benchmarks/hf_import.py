"""Import of a Hugging Face directory: peak memory and time of `llmctl.model.hf_import.load_hf`.

    .venv/bin/python benchmarks/hf_import.py [--layers 8] [--d-model 512] [--vocab 32000] [--dtype bfloat16]

Writes a random Qwen2ForCausalLM of that shape (sharded, 50 MB shards, in --dtype) with transformers,
then loads it in a fresh process and reports the growth of its peak RSS (VmHWM, reset just before
the load) over its RSS before the load, against the size of the loaded fp32 model (target: <= 1.3x), and the
seconds the load took (fingerprinting the files included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# a script here named like a standard-library module would shadow it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

CHILD = """
import sys, time, json, torch
from llmctl.model.hf_import import load_hf

def kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))

open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = kb("VmRSS:")
t0 = time.perf_counter()
model, cfg, _, _ = load_hf(sys.argv[1])
dt = time.perf_counter() - t0
size = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"model_mb": size / 2**20, "peak_growth_mb": (kb("VmHWM:") - before) / 1024, "seconds": dt}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    a = ap.parse_args()
    import torch  # torch/transformers: only to write the model
    from transformers import AutoModelForCausalLM, Qwen2Config

    d = Path(tempfile.mkdtemp()) / "m"
    cfg = Qwen2Config(
        vocab_size=a.vocab,
        hidden_size=a.d_model,
        intermediate_size=a.d_model * 8 // 3 // 16 * 16,
        num_hidden_layers=a.layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    m = AutoModelForCausalLM.from_config(cfg).to(getattr(torch, a.dtype))
    m.save_pretrained(d, max_shard_size="50MB")
    del m
    out = subprocess.run([sys.executable, "-c", CHILD, str(d)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["ratio"] = r["peak_growth_mb"] / r["model_mb"]
    print(json.dumps({k: round(v, 3) for k, v in r.items()}))


if __name__ == "__main__":
    main()
