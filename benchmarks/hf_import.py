"""Import of a Hugging Face directory: peak memory and time of `llmctl.model.hf_import.load_hf`.

    .venv/bin/python benchmarks/hf_import.py [--layers 8] [--d-model 512] [--vocab 32000] [--dtype bfloat16]

Writes a random Qwen2ForCausalLM of that shape (sharded, 50 MB shards, in --dtype) with transformers,
then loads it in a fresh process and reports the growth of its peak RSS (VmHWM, reset just before
the load) over its RSS before the load, against the size of the loaded fp32 model (target: <= 1.3x), and the
seconds the load took (fingerprinting the files included). Twice, each in a fresh process:

- `ratio`: after a warm-up that builds a one-layer model of the same config on the meta device, so
  the process has already paid the one-time cost of torch's meta-tensor machinery (the first
  initialisation of a meta tensor imports ~800 Python modules of torch, ~70 MB, whatever the model's
  size; any training or generation process pays it anyway): the memory the load itself takes;
- `ratio_cold`: torch imported and nothing else: that one-time cost included.
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
import dataclasses, sys, time, json, torch
from llmctl.model.hf_import import hf_model_config, load_hf
from llmctl.model.transformer import Transformer

def kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))

if sys.argv[2] == "warm":
    with torch.device("meta"):
        Transformer(dataclasses.replace(hf_model_config(sys.argv[1]), n_layer=1, vocab_size=64))
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
    r = {}
    for kind in ("warm", "cold"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(d), kind], capture_output=True, text=True, check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        tail = "" if kind == "warm" else "_cold"
        r["model_mb"] = got["model_mb"]
        r["peak_growth_mb" + tail] = got["peak_growth_mb"]
        r["ratio" + tail] = got["peak_growth_mb"] / got["model_mb"]
        r["seconds" + tail] = got["seconds"]
    print(json.dumps({k: round(v, 3) for k, v in r.items()}))


if __name__ == "__main__":
    main()
