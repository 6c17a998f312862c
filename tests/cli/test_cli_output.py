"""What the commands print, in a log file and on a terminal: echoed commands stay one line off a
terminal, step lines are compact, counts are integers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmctl.train.loop import _log_line
from llmctl.utils.formatting import format_value


@pytest.mark.slow
def test_echoed_commands_are_not_wrapped_in_a_log(tmp_path):
    """`llmctl run` into a pipe (make, CI): rich used to wrap at 80 columns, breaking commands mid-line."""
    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        "name: p\nstages:\n  - name: sft_data_with_a_long_stage_name\n"
        "    run: data import examples/sft/gsm8k_train.jsonl -o ${out} --format sft --val-fraction 0.05 --seed 3\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = subprocess.run(
        [sys.executable, "-m", "llmctl", "run", str(pipe), "-o", str(tmp_path / "root")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    echoed = [ln for ln in r.stdout.splitlines() if ln.startswith("[sft_data_with_a_long_stage_name] llmctl")]
    assert len(echoed) == 1 and len(echoed[0]) > 100 and echoed[0].endswith("--val-fraction 0.05 --seed 3")
    assert any(
        ln.startswith("imported 1,000 of 1,000 rows") and ln.endswith("sft_data_with_a_long_stage_name")
        for ln in r.stdout.splitlines()
    )


def test_dpo_step_lines_are_compact():
    """Every metric goes to metrics.jsonl; the line shows loss, lr, gnorm, tok/s, accuracy and margin
    (it showed TRL's six rewards/* and logps/* and their val_ twins, 3-4 lines at 120 columns)."""
    rec = {
        "step": 20,
        "loss": 0.6712,
        "lr": 5e-4,
        "grad_norm": 1.234,
        "tokens_per_s": 1234.0,
        "tokens": 40960,
        "elapsed_s": 3.0,
        "rewards/chosen": 0.0123,
        "rewards/rejected": -0.0298,
        "rewards/accuracies": 0.625,
        "rewards/margins": 0.0421,
        "logps/chosen": -250.1234,
        "logps/rejected": -301.2345,
        "val_loss": 0.7219,
        "val_rewards/chosen": 0.1,
        "val_rewards/rejected": 0.0,
        "val_rewards/accuracies": 0.5714,
        "val_rewards/margins": 0.1474,
        "val_logps/chosen": -240.0,
        "val_logps/rejected": -290.0,
    }
    lines = _log_line(rec, 80).splitlines()
    assert lines == [
        "step    20/80 | loss 0.6712 | lr 5.00e-04 | gnorm 1.234 | 1,234 tok/s | acc 0.6250 | margin 0.0421",
        "step    20/80 | val_loss 0.7219 | val_acc 0.5714 | val_margin 0.1474",
    ]
    assert all(len(ln) <= 100 for ln in lines)
    sft = _log_line(
        {"step": 5, "loss": 3.2, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 9e3, "response_tokens": 1254.0}, 150
    )
    assert (
        sft == "step     5/150 | loss 3.2000 | lr 1.00e-03 | gnorm 0.500 | 9,000 tok/s"
    )  # no response_tokens 1254.0000


def test_counts_are_integers():
    assert format_value("train_documents", 529.0) == "529"
    assert format_value("contaminated_items", 0.0) == "0"
    assert format_value("documents", 12345.0) == "12,345"
    assert format_value("acc", 1.0) == "1.0000" and format_value("mean_words", 5.8) == "5.8000"
    assert format_value("exact_match", None) == ""
