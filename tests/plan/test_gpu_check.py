"""scripts/gpu_check.py's --dry-run (tiny model on CPU) runs every check and passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_dry_run_passes():
    r = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("  ")]
    assert len(lines) == 4 and all(line.lstrip().startswith("ok") for line in lines), r.stdout
    assert "plan" in lines[-1] and "measured" in lines[-1]


@pytest.mark.slow
def test_gpu_check_without_a_gpu_exits_nonzero():
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "no CUDA device" in r.stderr
