#!/usr/bin/env bash
# The 124m preset's training throughput on the GPUs of this machine: tokens/s, MFU and peak memory
# on 1 GPU (bf16 autocast, torch.compile) and, with 2 or more GPUs, DDP 2, FSDP2 2 and TP 2.
# Runs llmctl's real training loop on random tokens (benchmarks/parallel.py --gpu); a few minutes.
#
#   scripts/gpu_throughput.sh               # from the repository root, after `make install`
#   scripts/gpu_throughput.sh --steps 50    # longer runs (the first 10 steps are left out)
#   scripts/gpu_throughput.sh --dry-run     # no GPU: the same plumbing on CPU, tiny shape, seconds
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ " $* " == *" --dry-run "* ]]; then
  exec "$PY" benchmarks/parallel.py "$@"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
exec "$PY" benchmarks/parallel.py --gpu "$@"
