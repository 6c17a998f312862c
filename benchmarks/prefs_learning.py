"""Does the toy pipeline's reward model and DPO learn preferences that hold on pairs they never saw?

    .venv/bin/python benchmarks/prefs_learning.py [--slices all len2x] [--work benchmarks/.work/prefs_learning]
                                                  [--sft RUN/sft]

1. Runs pipelines/toy.yaml up to its `sft` stage (`llmctl run --until sft`; reused when up to date),
   or takes `--sft`, the sft stage of a toy run made before.
2. For each slice of ../shared/data/prefs (HH-RLHF harmless-base test, 2,303 usable pairs):
     all    every pair;
     len2x  pairs whose replies differ in length by 2x or more (in characters): 1,240 pairs, the
            slice examples/prefs ships (examples/make_examples.py writes it the same way);
   runs the toy's own `prefs` (data import), `reward` and `dpo` commands on it, flags as in
   toy.yaml, then `llmctl eval DPO --task prefs --reward-model RM` on the held-out pairs.
3. Prints per slice: the reward model's held-out accuracy, DPO's implicit-reward accuracy against
   its reference (the SFT model, which itself scores 0.5: all its implicit rewards are 0) with
   z = (accuracy - 0.5) / stderr, the likelihood accuracy (log p(chosen) > log p(rejected)) of
   the SFT and DPO models, and two baselines on the same split: "shorter reply is chosen" and a
   bag-of-words logistic regression on the train pairs (what word counts alone predict).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "pipelines" / "toy.yaml"
SHARED_DATA = Path(
    os.environ.get("LLMCTL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)  # ../shared/data beside the checkout
HH = SHARED_DATA / "prefs/hh_rlhf_harmless_base_test.jsonl"
LLMCTL = [sys.executable, "-m", "llmctl"]


def length_ratio(chosen: str, rejected: str) -> float:
    return max(len(chosen), len(rejected)) / max(1, min(len(chosen), len(rejected)))


def write_slice(name: str, out: Path) -> Path:
    from llmctl.data.chat_data import _pref_row

    keep = []
    for line in HH.read_text(encoding="utf-8").splitlines():
        p, _ = _pref_row(json.loads(line))
        if p and (name == "all" or length_ratio(p["chosen"], p["rejected"]) >= 2):
            keep.append(line)
    out.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
    return out


def stage_cmd(stages: dict, name: str, subs: dict[str, str]) -> list[str]:
    cmd = stages[name]
    for k, v in subs.items():
        cmd = cmd.replace("${" + k + "}", v)
    return cmd.split()


def run(cmd: list[str]) -> float:
    t0 = time.time()
    r = subprocess.run(LLMCTL + cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"failed: llmctl {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return time.time() - t0


def bag_of_words(train: list[dict], val: list[dict]) -> float:
    """Held-out accuracy of a logistic regression on word-count differences (chosen - rejected)."""
    words = lambda t: re.findall(r"[a-z']+|[^\sa-z]", t.lower())  # noqa: E731
    counts = Counter(w for p in train for w in set(words(p["chosen"]) + words(p["rejected"])))
    vocab = {w: i for i, (w, c) in enumerate(counts.most_common()) if c >= 3}

    def feats(t: str) -> torch.Tensor:
        v = torch.zeros(len(vocab) + 1)
        for w in words(t):
            if w in vocab:
                v[vocab[w]] += 1
        v[-1] = len(words(t)) / 50
        return v

    x = torch.stack([feats(p["chosen"]) - feats(p["rejected"]) for p in train])
    xv = torch.stack([feats(p["chosen"]) - feats(p["rejected"]) for p in val])
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = -torch.nn.functional.logsigmoid(x @ w).mean() + 0.05 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ((xv @ w) > 0).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", nargs="+", default=["all", "len2x"], choices=["all", "len2x"])
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "prefs_learning")
    ap.add_argument("--sft", type=Path, help="a toy run's sft stage (default: run the toy pipeline up to it)")
    args = ap.parse_args()

    from llmctl.cli.runner import load_pipeline
    from llmctl.store.dataset import Dataset

    args.work.mkdir(parents=True, exist_ok=True)
    stages = {s.name: s.run for s in load_pipeline(TOY).stages}
    sft = args.sft
    if sft is None:
        sft = args.work / "toy" / "sft"
        t0 = time.time()
        r = subprocess.run(
            LLMCTL + ["run", str(TOY), "-o", str(sft.parent), "--until", "sft"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if r.returncode:
            sys.exit(r.stderr[-2000:])
        print(f"toy pipeline up to sft: {time.time() - t0:.0f} s", flush=True)
    rows = []
    for name in args.slices:
        d = args.work / name
        d.mkdir(exist_ok=True)
        src = write_slice(name, d / "pairs.jsonl")
        subs = {"out": "", "sft": str(sft)}
        imp = stage_cmd(stages, "prefs", {**subs, "out": str(d / "prefs")})
        imp[2] = str(src)  # data import SRC -o ...: this slice instead of examples/prefs
        secs = {"prefs": run(imp + ["--overwrite"])}
        subs["prefs"] = str(d / "prefs")
        for st in ("reward", "dpo"):
            secs[st] = run(stage_cmd(stages, st, {**subs, "out": str(d / st)}) + ["--overwrite"])
        t1 = time.time()
        run(
            [
                "eval",
                str(d / "dpo"),
                "-o",
                str(d / "eval"),
                "--task",
                "prefs",
                "--reward-model",
                str(d / "reward"),
                "--prefs-data",
                str(d / "prefs"),
                "--overwrite",
            ]
        )
        secs["eval"] = time.time() - t1
        res = {r["metric"]: r for r in Dataset.open(d / "eval", stage="eval").iter_rows()}
        pairs = list(Dataset.open(d / "prefs").iter_rows())
        train = [p for p in pairs if p["split"] == "train"]
        val = [p for p in pairs if p["split"] == "val"]
        shorter = sum(len(p["chosen"]) < len(p["rejected"]) for p in val) / len(val)
        rows.append((name, len(train), len(val), res, shorter, bag_of_words(train, val), secs))
        print(f"{name}: done ({', '.join(f'{k} {v:.0f} s' for k, v in secs.items())})", flush=True)

    print(
        "\n| slice | train / held-out pairs | reward model accuracy | DPO implicit-reward accuracy (z vs 0.5) | "
        "likelihood accuracy SFT -> DPO | shorter-is-chosen | bag of words |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, ntr, nval, res, shorter, bow, _ in rows:
        rm, imp = res["accuracy"], res["implicit_accuracy"]
        z = (imp["value"] - 0.5) / imp["stderr"]
        print(
            f"| {name} | {ntr:,} / {nval:,} | {rm['value']:.3f} ± {rm['stderr']:.3f} | "
            f"{imp['value']:.3f} ± {imp['stderr']:.3f} (z {z:.1f}) | "
            f"{res['reference_likelihood_accuracy']['value']:.3f} -> {res['likelihood_accuracy']['value']:.3f} | "
            f"{shorter:.3f} | {bow:.3f} |"
        )
    for name, *_, secs in rows:
        print(f"{name}: seconds " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()))


if __name__ == "__main__":
    main()
