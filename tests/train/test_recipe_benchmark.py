"""benchmarks/recipe.py equal-time: nanoGPT's train.py at other seeds, unchanged, through the seed
runner; every seed of every side run and summarised, and the verdict against nanoGPT.

nanoGPT itself is not a dependency: FAKE_TRAIN is a nanoGPT-shaped train.py (its configurator, one
`torch.manual_seed(1337 + seed_offset)` before the model and batch sampling from torch's global
generator, its log lines) that trains a small bigram model on the prepared train.bin. On the real
file the benchmark checks the runner itself before timing (`check_seed_runner`), tested here too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pretrain_helpers import stories

from llmctl.model.transformer import ModelConfig, Transformer

REPO = Path(__file__).parents[2]

FAKE_CONFIGURATOR = """\
import sys
from ast import literal_eval
for arg in sys.argv[1:]:
    key, val = arg[2:].split('=', 1)
    try:
        globals()[key] = literal_eval(val)
    except (SyntaxError, ValueError):
        globals()[key] = val
"""

FAKE_MODEL = """\
import torch
class Bigram(torch.nn.Module):
    def __init__(self, vocab, n_embd):
        super().__init__()
        self.wte = torch.nn.Parameter(torch.randn(vocab, n_embd) * 0.02)
        self.head = torch.nn.Parameter(torch.randn(vocab, n_embd) * 0.02)
    def forward(self, x, y):
        logits = self.wte[x] @ self.head.T
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
"""

FAKE_TRAIN = """\
import os, pickle
import numpy as np
import torch
from model import Bigram
dataset, out_dir, batch_size, block_size, n_embd = 'none', 'out', 4, 8, 8
max_iters, eval_interval, eval_iters, learning_rate = 3, 3, 2, 1e-2
device, compile, dtype, n_layer, n_head, eval_only = 'cpu', False, 'float32', 1, 1, False
exec(open('configurator.py').read())
seed_offset = 0
os.makedirs(out_dir, exist_ok=True)
torch.manual_seed(1337 + seed_offset)
data_dir = os.path.join('data', dataset)
def get_batch(split):
    data = np.memmap(os.path.join(data_dir, split + '.bin'), dtype=np.uint16, mode='r')
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    return x, y, ix
vocab = pickle.load(open(os.path.join(data_dir, 'meta.pkl'), 'rb'))['vocab_size']
model = Bigram(vocab, n_embd)
params = int(open('params.txt').read()) if os.path.exists('params.txt') else model.wte.numel()
print(f"number of parameters: {params / 1e6:.6f}M")
print("init " + " ".join(f"{v:.6f}" for v in model.wte[0, :4].tolist()))
opt = torch.optim.AdamW(model.parameters(), lr=learning_rate)
X, Y, ix = get_batch('train')
print("first batch " + " ".join(str(int(i)) for i in ix))
iter_num = 0
while True:
    if iter_num % eval_interval == 0:
        with torch.no_grad():
            ls = {s: sum(model(*get_batch(s)[:2]).item() for _ in range(eval_iters)) / eval_iters for s in ('train', 'val')}
        print(f"step {iter_num}: train loss {ls['train']:.4f}, val loss {ls['val']:.4f}")
    if eval_only:
        break
    loss = model(X, Y)
    X, Y, _ = get_batch('train')
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    print(f"iter {iter_num}: loss {loss.item():.4f}, time 1.00ms, mfu -100.00%")
    iter_num += 1
    if iter_num > max_iters:
        break
"""


def _recipe():
    spec = importlib.util.spec_from_file_location("recipe_benchmark", REPO / "benchmarks" / "recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


recipe = _recipe()


def fake_nanogpt(root: Path, vocab: int = 64) -> tuple[Path, Path]:
    """A nanoGPT-shaped checkout and a prepared dataset of random ids (train.bin / val.bin / meta.pkl)."""
    repo = root / "nanogpt"
    repo.mkdir()
    (repo / "configurator.py").write_text(FAKE_CONFIGURATOR)
    (repo / "model.py").write_text(FAKE_MODEL)
    (repo / "train.py").write_text(FAKE_TRAIN)
    ids = np.random.default_rng(0).integers(0, vocab, 4000)
    ids = {"train": ids[:3000], "val": ids[3000:]}
    data = {"train": (ids["train"], None), "val": (ids["val"], None), "vocab": vocab}
    return repo, recipe.prepare_nanogpt(data, root)


def run(cmd: list[str], cwd: Path) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert r.returncode == 0, r.stderr
    return r.stdout


def line(out: str, prefix: str) -> str:
    return next(ln for ln in out.splitlines() if ln.startswith(prefix))


@pytest.mark.slow  # three processes that import torch
def test_seed_runner_offsets_nanogpts_seed_and_leaves_train_py_unchanged(tmp_path):
    repo, prepared = fake_nanogpt(tmp_path)
    before = hashlib.sha256((repo / "train.py").read_bytes()).hexdigest()
    args = [f"--dataset={prepared}", "--max_iters=2", "--eval_interval=2", "--batch_size=4", "--block_size=8"]
    plain = run([sys.executable, "train.py", *args], repo)
    seed0 = run(recipe.nanogpt_command(0, args), repo)
    seed3 = run(recipe.nanogpt_command(3, args), repo)

    assert seed0 == plain  # seed 0 is nanoGPT's own run, line for line
    assert hashlib.sha256((repo / "train.py").read_bytes()).hexdigest() == before
    # seed 3 = what torch.manual_seed(1337 + 3) gives train.py: its initialisation, then its batches
    torch.manual_seed(1340)
    wte = torch.randn(64, 8) * 0.02
    torch.randn(64, 8)  # the head
    ix = torch.randint(3000 - 8, (4,))
    assert line(seed3, "init ") == "init " + " ".join(f"{v:.6f}" for v in wte[0, :4].tolist())
    assert line(seed3, "first batch ") == "first batch " + " ".join(str(int(i)) for i in ix)
    assert line(seed3, "init ") != line(seed0, "init ")
    assert line(seed3, "first batch ") != line(seed0, "first batch ")
    assert line(seed3, "step 2:") != line(seed0, "step 2:")


@pytest.mark.slow  # six processes that import torch
def test_the_benchmark_checks_the_seed_runner_on_the_checkout_it_is_given(tmp_path):
    """equal-time checks the runner on the real checkout before timing (the suite cannot fetch
    nanoGPT); here on the nanoGPT-shaped train.py: it passes, and it stops a run whose train.py
    seeds torch in a way the runner does not offset."""
    repo, _ = fake_nanogpt(tmp_path)
    recipe.check_seed_runner(repo, tmp_path / "check")
    bad = tmp_path / "bad"
    bad.mkdir()
    repo2, _ = fake_nanogpt(bad)
    src = (repo2 / "train.py").read_text()
    (repo2 / "train.py").write_text(
        src.replace("torch.manual_seed(1337 + seed_offset)", "torch.random.default_generator.manual_seed(1337)")
    )
    with pytest.raises(SystemExit, match="seed is not used"):
        recipe.check_seed_runner(repo2, tmp_path / "check2")


def test_verdict():
    v = recipe.verdict([1.20, 1.22, 1.21], [1.47, 1.46, 1.50])
    assert v["pass"] and v["ranges_apart"]
    assert v["mean_diff"] == pytest.approx((1.47 + 1.46 + 1.50 - 1.20 - 1.22 - 1.21) / 3)
    assert v["spread"] == pytest.approx(0.04)
    # below at every seed, but the ranges overlap
    v = recipe.verdict([1.30, 1.50], [1.40, 1.60])
    assert v["pass"] and not v["ranges_apart"]
    # one seed above: FAIL
    v = recipe.verdict([1.30, 1.45], [1.40, 1.44])
    assert not v["pass"] and not v["every_seed"]
    with pytest.raises(ValueError):
        recipe.verdict([1.0, 1.1], [1.2])


@pytest.mark.slow  # eight tiny llmctl runs and four fake nanoGPT processes
def test_equal_time_runs_every_seed_of_every_side(tmp_path):
    text = tmp_path / "stories.txt"
    text.write_text("\n\n".join(stories(200)), encoding="utf-8")
    repo, _ = fake_nanogpt(tmp_path)
    shape = dict(vocab_size=400, n_layer=1, n_head=2, d_model=16, max_seq_len=16)
    tied = Transformer(ModelConfig(**shape, **recipe.VARIANTS["recipe_tied"][1])).num_params()
    (repo / "params.txt").write_text(str(tied))  # the fake reports recipe_tied's count: a verdict is due
    out = tmp_path / "res.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "recipe.py"), "equal-time", "--data", str(text)]
    cmd += ["--vocab", "400", "--n-layer", "1", "--n-head", "2", "--d-model", "16", "--seq-len", "16"]
    cmd += ["--batch", "2", "--seconds", "0.3", "--probe-steps", "2", "--seeds", "0,1", "--threads", "1"]
    cmd += ["--variants", "adamw,recipe_tied", "--nanogpt", str(repo), "--out", str(tmp_path / "work")]
    cmd += ["--json", str(out), "--plot", str(tmp_path / "p.png")]
    stdout = run(cmd, REPO)
    res = json.loads(out.read_text())

    assert res["seeds"] == [0, 1]
    assert [r["side"] for r in res["rows"]] == ["adamw", "recipe_tied", "nanogpt"]
    for r in res["rows"]:
        assert [s["seed"] for s in r["seeds"]] == [0, 1]
        bpb = [s["val_bpb"] for s in r["seeds"]]
        assert bpb[0] != bpb[1]  # the seed reaches every side, nanoGPT's included
        assert {s["tokens"] for s in r["seeds"]} == {r["steps"] * 2 * 16}  # one step count for all seeds
        assert r["val_bpb_mean"] == pytest.approx(sum(bpb) / 2)
        assert (r["val_bpb_min"], r["val_bpb_max"]) == (min(bpb), max(bpb))
        assert all(
            s["val_bpb"] == pytest.approx(s["val_loss"] / math.log(2) / res["bytes_per_token"]) for s in r["seeds"]
        )
        assert f"| {r['side']} |" in stdout and ", ".join(f"{b:.4f}" for b in bpb) in stdout
    nano = res["rows"][2]
    assert res["rows"][1]["params"] == tied
    assert nano["params"] == pytest.approx(tied, abs=1)
    best = min(res["rows"][:2], key=lambda r: r["val_bpb_mean"] if abs(r["params"] - tied) <= 0.05 * tied else 9)
    v = res["verdict"]
    assert v["best"] == best["side"]
    expect = all(b["val_bpb"] < n["val_bpb"] for b, n in zip(best["seeds"], nano["seeds"]))
    assert v["pass"] == expect
    assert ("PASS" if expect else "FAIL") in stdout
    assert (tmp_path / "p.png").stat().st_size > 0
    # each side was timed once (two probe runs at the first seed), not once a seed
    probes = sorted(p.name for p in (tmp_path / "work" / "probe").iterdir())
    assert probes == sorted(
        [f"{n}-s0-{k}" for n in ("adamw", "recipe_tied") for k in (2, 4)] + ["nanogpt-s0-2", "nanogpt-s0-4"]
    )
