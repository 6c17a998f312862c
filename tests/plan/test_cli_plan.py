"""`llmctl plan` as a user runs it."""

from __future__ import annotations

from typer.testing import CliRunner

from llmctl.cli import app
from llmctl.model.transformer import preset_config
from llmctl.plan import Layout, get_gpu, plan

runner = CliRunner()


def test_350m_fits_an_h100_but_not_an_l4_without_sharding():
    r = runner.invoke(app, ["plan", "--preset", "350m", "--micro-batch", "16", "--gpu", "h100", "--gpu", "l4"])
    assert r.exit_code == 0, r.output
    rows = {
        line.split("│")[2].strip(): line.split("│")[3].strip()
        for line in r.output.splitlines()
        if "one process" in line and ("h100" in line or " l4 " in line)
    }
    assert rows == {"h100": "yes", "l4": "NO"}
    p = plan(preset_config("350m", 50304), Layout(), 1024, 512, 16, gpu=get_gpu("l4"))
    assert not p.fits and get_gpu("h100").memory_bytes > p.memory.peak > get_gpu("l4").memory_bytes
    assert "params" in r.output and "GFLOPs/token" in r.output


def test_layouts_compared_and_a_refused_one_says_why():
    r = runner.invoke(app, ["plan", "--preset", "350m", "--dp", "8", "--tp", "1,3,8", "--fsdp", "--seq-len", "256"])
    assert r.exit_code == 0, r.output
    assert "8 = dp8 x tp1 (fsdp)" in r.output and "64 = dp8 x tp8 (fsdp)" in r.output
    assert "refused 24 = dp8 x tp3" in r.output and "n_head=16" in r.output


def test_gpu_file_extends_the_table(tmp_path):
    f = tmp_path / "gpus.yaml"
    f.write_text("tiny-gpu: {memory_gib: 0.001, bf16_tflops: 1}\n")
    r = runner.invoke(
        app,
        [
            "plan",
            "--preset",
            "tiny",
            "--vocab-size",
            "4096",
            "--seq-len",
            "256",
            "--gpu",
            "tiny-gpu",
            "--gpu-file",
            str(f),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "tiny-gpu" in r.output and "NO" in r.output


def test_bad_flags_are_one_line_errors():
    r = runner.invoke(app, ["plan", "--gpu", "nosuch"])
    assert "unknown GPU 'nosuch'" in str(r.exception)
    r = runner.invoke(app, ["plan", "--dp", "x"])
    assert "--dp 'x'" in str(r.exception)
