"""Accelerators a plan can target: memory and dense bf16 peak FLOP/s (no sparsity), from vendors' data sheets.

Add or override entries with a YAML or JSON file, `{name: {memory_gib: 80, bf16_tflops: 989}}`,
given with `llmctl plan --gpu-file FILE` or the LLMCTL_GPUS environment variable.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from llmctl.errors import UsageError


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    bf16_tflops: float

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2**30

    @property
    def peak_flops(self) -> float:
        return self.bf16_tflops * 1e12


GPUS: dict[str, GPU] = {
    g.name: g
    for g in [
        GPU("h100", 80, 989),  # H100 SXM
        GPU("h100-pcie", 80, 756),
        GPU("h200", 141, 989),
        GPU("a100", 80, 312),  # A100 80GB SXM
        GPU("a100-40", 40, 312),
        GPU("l4", 24, 121),
        GPU("a10", 24, 125),
        GPU("rtx4090", 24, 165),
    ]
}


def load_gpus(path: str | Path | None = None) -> dict[str, GPU]:
    """The built-in table, updated from `path` (or LLMCTL_GPUS when path is None)."""
    table = dict(GPUS)
    path = path or os.environ.get("LLMCTL_GPUS")
    if not path:
        return table
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"GPU file {p} does not exist")
    try:
        data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
        for name, spec in (data or {}).items():
            table[name] = GPU(str(name), float(spec["memory_gib"]), float(spec["bf16_tflops"]))
    except (ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError) as e:
        raise UsageError(f"GPU file {p}: expected {{name: {{memory_gib: N, bf16_tflops: N}}}} ({e})") from e
    return table


def get_gpu(name: str, path: str | Path | None = None) -> GPU:
    table = load_gpus(path)
    if name not in table:
        raise UsageError(f"unknown GPU {name!r}; choose one of {', '.join(table)} or add it with --gpu-file")
    return table[name]
