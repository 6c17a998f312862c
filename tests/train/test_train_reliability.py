"""Training runs as a user's bad day meets them (issue 20): killed after the last checkpoint, killed
while writing or rotating one, a set-up error, a full disk, Ctrl-C; and the file modes of what a
run writes. A re-run of the same command must always be the way out."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pretrain_helpers import make_tokenizer, write_token_rows, write_tokens

from llmctl import config as C
from llmctl.errors import UsageError
from llmctl.model.checkpoint import load_checkpoint, load_train_state
from llmctl.train.pretrain import PretrainConfig, pretrain

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

LLMCTL = [sys.executable, "-m", "llmctl"]
BASE = {
    "seq_len": 32,
    "batch_tokens": 128,
    "train.micro_batch": 4,
    "train.steps": 6,
    "train.eval_every": 3,
    "train.ckpt_every": 2,
    "train.warmup_steps": 2,
    "train.lr": 3e-3,
    "model.d_model": 32,
    "model.n_layer": 1,
    "train.keep_checkpoints": 3,
}
FLAGS = [
    "--d-model",
    "32",
    "--n-layer",
    "1",
    "--seq-len",
    "32",
    "--batch-tokens",
    "128",
    "--micro-batch",
    "4",
    "--warmup",
    "2",
    "--lr",
    "3e-3",
]


def cfg(**flags) -> PretrainConfig:
    return C.load(PretrainConfig, None, None, {**BASE, **flags})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    tok = make_tokenizer(root / "tok")
    write_tokens(root / "tokens", tok)
    return root


def files(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*")) if p.is_file()}


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_killed_after_the_last_checkpoint_then_finished_runs_are_left_alone(data, tmp_path):
    run = tmp_path / "run"
    done = pretrain(data / "tokens", data / "tok", run, cfg())
    good = json.loads((run / "_manifest.json").read_text())["stats"]
    (run / "_manifest.json").unlink()  # what a kill between the last checkpoint and the manifest leaves
    before = files(run)
    again = pretrain(data / "tokens", data / "tok", run, cfg())  # the same command: no step is trained again
    stats = json.loads((run / "_manifest.json").read_text())["stats"]
    for k in ("loss", "val_loss", "step", "tokens"):
        assert stats[k] == good[k] == done[k] == again[k], k
    assert stats["tokens"] == 6 * 128 and {k: v for k, v in files(run).items() if k != "_manifest.json"} == before
    finished = files(run)
    for resume in (False, True):  # `--resume` on a finished run once rewrote its manifest with loss nan, 0 tokens
        s = pretrain(data / "tokens", data / "tok", run, cfg(), resume=resume)
        assert s["complete"] and s["loss"] == good["loss"] and files(run) == finished


def test_half_written_and_half_rotated_checkpoints_are_cleaned_and_the_run_resumes_exactly(data, tmp_path, capfd):
    straight = tmp_path / "a"
    pretrain(data / "tokens", data / "tok", straight, cfg())
    run = tmp_path / "b"
    pretrain(data / "tokens", data / "tok", run, cfg(**{"train.stop_after": 4}))
    ck = run / "checkpoints"
    shutil.copytree(ck / "step_0000004", ck / ".step_0000006.tmp-4242")  # killed inside save_checkpoint
    (ck / ".step_0000006.tmp-4242" / "_manifest.json").unlink()
    shutil.copytree(ck / "step_0000002", ck / ".step_0000002.del-4242")  # killed inside a rotation's delete
    (ck / "step_0000002" / "train_state.pt").unlink()  # ... or by the old rotation: a half-deleted step dir
    (ck / "step_0000004").rename(ck / ".step_0000004.old-4242")  # set aside by a replacement that never landed
    s = pretrain(data / "tokens", data / "tok", run, cfg())
    assert s["start_step"] == 4 and s["finished"]
    assert sorted(p.name for p in ck.iterdir()) == ["step_0000004", "step_0000006"]
    assert "removed 3 unfinished checkpoint(s)" in capfd.readouterr().err
    assert [r.get("loss") for r in metrics(run)] == [r.get("loss") for r in metrics(straight)]
    assert [r["tokens"] for r in metrics(run) if "tokens" in r] == [128 * k for k in range(1, 7)]


def test_an_error_before_the_first_step_leaves_the_run_dir_as_it_was(data, tmp_path):
    other = make_tokenizer(tmp_path / "small-tok", vocab_size=370)
    short = write_token_rows(tmp_path / "short", [[5, 6, 7, other.eos_id]] * 4)
    foreign = write_token_rows(tmp_path / "foreign", [[399] * 40 + [other.eos_id]] * 20)  # made with a bigger vocab
    run = tmp_path / "run"
    cases = [
        (foreign, tmp_path / "small-tok", cfg(), "outside the tokenizer"),  # a foreign tokenizer
        (data / "tokens", data / "tok", cfg(**{"model.preset": "huge"}), "unknown model preset"),
        (short, tmp_path / "small-tok", cfg(), "fewer than one window"),  # more sequence than the data holds
        (data / "tokens", data / "tok", cfg(**{"batch_tokens": 64, "train.micro_batch": 4}), "not a multiple"),
    ]
    for tokens, tok, c, msg in cases:
        with pytest.raises(UsageError, match=msg):
            pretrain(tokens, tok, run, c)
        assert not run.exists(), msg
    part = pretrain(data / "tokens", data / "tok", run, cfg(**{"train.stop_after": 2}))  # the corrected command
    assert part["steps_done"] == 2
    before = files(run)
    with pytest.raises(UsageError, match="unknown model preset"):  # --overwrite, failing in set-up: old run kept
        pretrain(data / "tokens", data / "tok", run, cfg(**{"model.preset": "huge"}), overwrite=True)
    assert files(run) == before


def test_sft_batch_below_micro_batch_leaves_nothing(tmp_path):
    from align_helpers import tiny_checkpoint

    from llmctl.train.sft import SFTConfig, run_sft

    ck = tiny_checkpoint(tmp_path / "ck")
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": f"{w}!"}) + "\n" for w in "abcdefgh"))
    c = SFTConfig(max_len=64, val_fraction=0.0, pack=False)
    c.train.steps, c.train.batch_size, c.train.micro_batch = 2, 2, 4
    with pytest.raises(UsageError, match="not a multiple of micro_batch"):
        run_sft(data, ck, tmp_path / "run", c)
    assert not (tmp_path / "run").exists()
    c.train.batch_size = 4  # the corrected command is not refused
    assert run_sft(data, ck, tmp_path / "run", c)["finished"]


@pytest.fixture(scope="module")
def probe(data, tmp_path_factory) -> Path:
    """One checkpoint of the size these tests write (step 2 of a 2-step run)."""
    run = tmp_path_factory.mktemp("probe") / "run"
    pretrain(data / "tokens", data / "tok", run, cfg(**{"train.steps": 2}))
    return run / "checkpoints" / "step_0000002"


def _checkpoint_bytes(step_dir: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in step_dir.rglob("*") if p.is_file())


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_previous_one(data, probe, tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs a user namespace (unshare -rm) to mount a small tmpfs; see the RLIMIT test below")
    size_kb = (_checkpoint_bytes(probe) * 3 // 2 + 64 * 1024) // 1024
    run = tmp_path / "run"
    run.mkdir()
    train_cmd = " ".join(
        LLMCTL
        + [
            "pretrain",
            str(data / "tokens"),
            "-t",
            str(data / "tok"),
            "-o",
            str(run),
            "--steps",
            "6",
            "--ckpt-every",
            "2",
            "--eval-every",
            "3",
            *FLAGS,
        ]
    )
    check = (
        "import json,os,sys; from llmctl.model.checkpoint import load_checkpoint, load_train_state; "
        f"d='{run}/checkpoints'; names=sorted(os.listdir(d)); "
        "load_checkpoint(d+'/'+names[-1]); st=load_train_state(d+'/'+names[-1]); "
        "print('CHECK', json.dumps({'names': names, 'step': st['step']}))"
    )
    script = (
        f"mount -t tmpfs -o size={size_kb}k tmpfs {run} && cd {os.getcwd()} && "
        f'{train_cmd} > {tmp_path}/out.txt 2> {tmp_path}/err.txt; echo RC=$?; {sys.executable} -c "{check}"'
    )
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert "RC=2" in r.stdout, (r.stdout, r.stderr, (tmp_path / "err.txt").read_text())
    err = (tmp_path / "err.txt").read_text().strip().splitlines()
    assert len(err) == 1 and "cannot write checkpoint" in err[0] and "step_000000" in err[0], err
    assert "Traceback" not in (tmp_path / "err.txt").read_text()
    found = json.loads(r.stdout.split("CHECK ", 1)[1])
    assert found["names"] == ["step_0000002"] and found["step"] == 2  # the previous checkpoint, whole; no .tmp


def test_a_failed_checkpoint_write_leaves_no_temporary_directory(data, probe, tmp_path):
    """RLIMIT_FSIZE makes every write past the limit fail (EFBIG), as a full disk does, without a mount."""
    st = probe
    limit = (st / "model.safetensors").stat().st_size + 4096  # the weights fit, the optimizer state does not
    assert (st / "train_state.pt").stat().st_size > limit

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run = tmp_path / "run"
    cmd = LLMCTL + [
        "pretrain",
        str(data / "tokens"),
        "-t",
        str(data / "tok"),
        "-o",
        str(run),
        "--steps",
        "2",
        "--ckpt-every",
        "2",
        *FLAGS,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot write checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert os.listdir(run / "checkpoints") == []  # no .step_N.tmp-PID left behind


def test_a_second_run_is_refused_ctrl_c_says_what_is_on_disk_and_the_same_command_resumes(data, tmp_path):
    from run_helpers import refused, start_and_freeze

    run = tmp_path / "run"
    cmd = LLMCTL + [
        "pretrain",
        str(data / "tokens"),
        "-t",
        str(data / "tok"),
        "-o",
        str(run),
        "--steps",
        "400",
        "--ckpt-every",
        "5",
        "--eval-every",
        "1000",
        *FLAGS,
    ]
    proc = start_and_freeze(cmd, run)
    try:
        refused(cmd, proc.pid)
        refused(cmd + ["--resume"], proc.pid)  # issue 20: two `--resume` both trained, interleaving metrics.jsonl
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    deadline = time.time() + 120
    while time.time() < deadline and not list((run / "checkpoints").glob("step_*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = sorted((run / "checkpoints").glob("step_*"))[-1]
    assert f"the last checkpoint is {last}: re-run the same command to resume from it" in err
    assert "finished shards" not in err
    steps = [r["step"] for r in metrics(run) if "loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no step twice
    again = subprocess.run(cmd + ["--stop-after", "1"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resumed from {last} at step {int(last.name[5:])}" in again.stdout


def test_files_written_by_a_run_and_an_export_get_one_mode_from_the_umask(data, tmp_path):
    from llmctl.export.hf import export_hf

    old = os.umask(0o027)
    try:
        tok = make_tokenizer(tmp_path / "tok")
        write_tokens(tmp_path / "tokens", tok, docs=60)
        pretrain(tmp_path / "tokens", tmp_path / "tok", tmp_path / "run", cfg(**{"train.steps": 2}))
        export_hf(tmp_path / "run", tmp_path / "hf")
    finally:
        os.umask(old)
    modes = {
        str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777)
        for d in ("run", "hf")
        for p in (tmp_path / d).rglob("*")
        if p.is_file()
    }
    assert "run/checkpoints/step_0000002/model.safetensors" in modes and "hf/model.safetensors" in modes
    assert set(modes.values()) == {oct(0o640)}, modes
    assert (
        load_checkpoint(tmp_path / "run")[1].n_layer == 1
        and load_train_state(tmp_path / "run" / "checkpoints" / "step_0000002")["step"] == 2
    )


def test_damaged_run_state_is_one_line_and_overwrite_replaces_it(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "_run.json").write_text("")  # an empty _run.json (a crash of the filesystem, a stray edit)
    with pytest.raises(UsageError, match=r"_run.json: damaged \(empty file\); pass --overwrite"):
        pretrain(data / "tokens", data / "tok", run, cfg(**{"train.steps": 2}))
    assert (run / "_run.json").read_text() == ""
    assert pretrain(data / "tokens", data / "tok", run, cfg(**{"train.steps": 2}), overwrite=True)["finished"]
