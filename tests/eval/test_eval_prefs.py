"""eval prefs/winrate: a reward model's held-out accuracy and a judged win rate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from eval_helpers import VOCAB, save_tokenizer, tiny_checkpoint  # noqa: E402

from llmctl.data.chat_data import split_of  # noqa: E402
from llmctl.eval.runner import EvalConfig, run_eval  # noqa: E402
from llmctl.model.checkpoint import save_checkpoint  # noqa: E402
from llmctl.model.transformer import ModelConfig  # noqa: E402
from llmctl.train.reward import RewardModel, load_reward_model  # noqa: E402


def reward_checkpoint(path: Path, tmp: Path) -> Path:
    tok_dir = tmp / "tok"
    if not (tok_dir / "llmctl_tokenizer.json").is_file():
        save_tokenizer(tok_dir)
    mc = ModelConfig(vocab_size=VOCAB, n_layer=1, n_head=2, d_model=32, max_seq_len=128, tie_embeddings=False)
    torch.manual_seed(11)
    model = RewardModel(mc)
    torch.nn.init.normal_(model.score_head.weight, 0.0, 1.0)
    return save_checkpoint(path, model, mc, tokenizer_dir=tok_dir)


def _pairs(path: Path, n: int) -> Path:
    words = "good kind bad rude happy sad big small".split()
    rows = [
        {
            "prompt": f"Say something number {i}.",
            "chosen": " ".join(words[i % 8 :][:3]) + f" {i}",
            "rejected": " ".join(words[(i + 3) % 8 :][:2]),
        }
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_prefs_accuracy_on_held_out_pairs(tmp_path):
    rm_dir = reward_checkpoint(tmp_path / "rm", tmp_path)
    data = _pairs(tmp_path / "pairs.jsonl", 60)
    cfg = EvalConfig(tasks=["prefs"], batch_size=4, progress=False)
    cfg.prefs.data, cfg.prefs.val_fraction = str(data), 0.3
    rows = {r["metric"]: r for r in run_eval(rm_dir, tmp_path / "res", cfg)["stats"]["results"]}
    # independent: the held-out rows by the reward stage's split rule, scored one at a time
    scorer = load_reward_model(rm_dir)
    held = []
    for r in map(json.loads, data.read_text().splitlines()):
        key = ([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"])
        if split_of(r, key, 0.3, 0) == "val":
            held.append(key)
    wins = [scorer.score([p], [c], 1)[0] > scorer.score([p], [rj], 1)[0] for p, c, rj in held]
    assert rows["accuracy"]["n"] == len(held) > 5
    assert rows["accuracy"]["value"] == pytest.approx(sum(wins) / len(wins))
    cfg.prefs.split = "all"
    rows_all = {r["metric"]: r for r in run_eval(rm_dir, tmp_path / "res_all", cfg)["stats"]["results"]}
    assert rows_all["accuracy"]["n"] == 60


def test_winrate_against_itself_is_one_half_and_lengths_are_reported(tmp_path):
    rm_dir = reward_checkpoint(tmp_path / "rm", tmp_path)
    a = tiny_checkpoint(tmp_path / "a", tmp_path, seed=1, max_seq_len=64)
    b = tiny_checkpoint(tmp_path / "b", tmp_path, seed=2, max_seq_len=64)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            json.dumps({"instruction": f"Tell me a story about {w}."}) for w in ("a cat", "the sea", "a red ball")
        )
        + "\n"
    )
    out = {}
    for name, base in (("self", a), ("other", b)):
        cfg = EvalConfig(tasks=["winrate"], progress=False)
        cfg.winrate.prompts, cfg.winrate.baseline, cfg.winrate.reward_model = str(prompts), str(base), str(rm_dir)
        cfg.winrate.max_new_tokens = 8
        out[name] = {r["metric"]: r for r in run_eval(a, tmp_path / f"res_{name}", cfg)["stats"]["results"]}
    s = out["self"]
    assert s["win_rate"]["value"] == 0.5 and s["win_rate"]["n"] == 3
    assert s["mean_words_model"]["value"] == s["mean_words_baseline"]["value"]
    o = out["other"]
    assert o["win_rate"]["value"] in (0.0, 1 / 3, 0.5, 2 / 3, 1.0, 1 / 6, 5 / 6)
    assert o["mean_reward_model"]["value"] == pytest.approx(s["mean_reward_model"]["value"])
