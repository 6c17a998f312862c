"""The GRPO options together (dapo, GSPO, clip-higher, mask-truncated, dynamic sampling) under torchrun
with 2 gloo processes give the same per-step losses and metrics as 1 process.

llmctl's rollouts draw from one sampling generator per rank, so by themselves the completions depend
on the world size. The driver below pins each completion's sampling to a generator of its own
(seeded by the prompt, its place in the group and the draw), still sampled from the policy by
llmctl's engine, so both runs see the same completions; everything after sampling (rewards, dynamic
sampling's all-rank draws, the dapo normaliser, GSPO ratios, the loss mask, DDP gradients) is the
real code. The prompts are laid out so that in every draw half the groups are flat and each rank
holds an equal share of the groups with a spread: both runs then draw twice and keep the same groups.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from align_helpers import tiny_checkpoint, write_jsonl

from llmctl.model.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # two torchrun launches

DRIVER = r'''
import sys, zlib
from types import SimpleNamespace
import torch
import llmctl.train.rl.rollout as RR
from llmctl.cli import app

real = RR.sample
draws = [0]

def per_row(model, prompts, cfg, tok, gen, tools, temperature):
    """Each completion sampled with its own generator: (prompt, place in its group, draw) -> seed."""
    draws[0] += 1
    seen, toks, stops, ended, n = {}, [], [], [], 0
    for p in prompts:
        j = seen[tuple(p)] = seen.get(tuple(p), -1) + 1
        seed = zlib.crc32(repr((p, j, draws[0])).encode())
        out, _ = real(model, [p], cfg, tok, torch.Generator().manual_seed(seed), tools, temperature)
        t, s, e = out.tokens[0], out.stops[0], out.ended[0]
        if seed % 3 == 0:  # a random tiny model rarely stops: a third of the completions end after 2 tokens
            t, s, e = t[:2], tok.stop_ids[0], True
        toks.append(t); stops.append(s); ended.append(e); n += out.new_tokens
    return SimpleNamespace(tokens=toks, stops=stops, ended=ended, new_tokens=n, seconds=1e-3), None

RR.sample = per_row
app(sys.argv[1:])
'''


def spread_or_flat(prompts, completions, flat, **_):
    """1 for every completion of a `flat` prompt; otherwise a number that differs between distinct completions."""
    return [1.0 if f else len(c) + sum(map(ord, c)) % 97 / 100 for c, f in zip(completions, flat)]


ROLLOUT, G, SEED = 8, 4, 0


def prompts_file(tmp: Path, n: int = 64) -> Path:
    """Rows whose places in the training permutation (PromptStream's, seed SEED, epoch 0) make each
    draw of ROLLOUT prompts flat at places 2, 3 (mod 4): rank r of 2 takes places r, r + 2, ..., so
    each rank gets one flat and one spread group of every four, as one process does."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SEED)).tolist()
    place = {row: i for i, row in enumerate(perm)}
    rows = [
        {"prompt": f"Say something about {w} and {k}.", "flat": place[k] % 4 in (2, 3)}
        for k, w in enumerate([f"item{i}" for i in range(n)])
    ]
    return write_jsonl(tmp / "prompts.jsonl", rows)


ARGS = [
    "--algo", "grpo", "--reward", "test_rl_options_ddp:spread_or_flat", "-G", str(G),
    "--rollout-prompts", str(ROLLOUT), "--max-new-tokens", "5", "--batch-size", str(ROLLOUT * G),
    "--micro-batch", "8", "--epochs", "2", "--steps", "4", "--lr", "3e-3", "--val-fraction", "0",
    "--eval-every", "0", "--ckpt-every", "4", "--beta", "0", "--seed", str(SEED),
    "--loss-type", "dapo", "--importance-sampling", "sequence", "--epsilon-high", "0.28", "--mask-truncated",
    "--dynamic-sampling", "--set", "max_draws=4",
]  # fmt: skip


# per-step values that do not depend on how the rollout is split over ranks and micro-batches (entropy
# and the clip ratios are means of per-micro-batch means, so they do)
SAME = ("loss", "grad_norm", "reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
        "completions/clipped_ratio", "lr")  # fmt: skip


def run(tmp: Path, name: str, nproc: int) -> list[dict]:
    ck, prompts = tmp / "ck", tmp / "prompts.jsonl"
    (tmp / "driver.py").write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += [str(tmp / "driver.py"), "rl", str(prompts), "--from", str(ck), "-o", str(tmp / name), *ARGS]
    here = str(Path(__file__).parent) + os.pathsep + str(Path(__file__).parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return [json.loads(ln) for ln in (tmp / name / "metrics.jsonl").read_text().splitlines()]


def test_grpo_options_under_ddp_equal_one_process(tmp_path):
    tiny_checkpoint(tmp_path / "ck", max_seq_len=128)
    prompts_file(tmp_path)
    one = [r for r in run(tmp_path, "one", 1) if "loss" in r]
    two = [r for r in run(tmp_path, "two", 2) if "loss" in r]
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]  # 2 rollouts x 2 epochs
    for a, b in zip(one, two):
        assert a["dynamic/draws"] == b["dynamic/draws"] == 2  # half the groups flat: one refill each rollout
        assert a["dynamic/groups_drawn"] == b["dynamic/groups_drawn"] == 2 * ROLLOUT
        assert a["dynamic/flat_kept"] == b["dynamic/flat_kept"] == 0 and a["frac_reward_zero_std"] == 0
        assert 0 < a["completions/clipped_ratio"] < 1  # some completions are masked out as truncated
        for k in SAME:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (a["step"], k)
    assert any(r["clip_ratio/region_mean"] > 0 for r in one)  # the second epoch is off-policy and clips
    wa, wb = load_checkpoint(tmp_path / "one")[0].state_dict(), load_checkpoint(tmp_path / "two")[0].state_dict()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)
