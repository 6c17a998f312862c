"""Chat data: HH-RLHF conversion rule, `data import` datasets, batching resume, and the CLI end to end."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from align_helpers import GSM8K, HH, synthetic_prefs, tiny_checkpoint, write_jsonl
from typer.testing import CliRunner

from llmctl.cli import app
from llmctl.data.chat_data import ItemBatches, hh_to_pref, import_data, parse_hh, read_rows
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset


def test_hh_dialogue_becomes_prompt_chosen_rejected():
    c = "\n\nHuman: How do I bake bread?\n\nAssistant: With flour.\n\nHuman: And then?\n\nAssistant: Knead it and bake it."
    r = "\n\nHuman: How do I bake bread?\n\nAssistant: With flour.\n\nHuman: And then?\n\nAssistant: Who cares."
    row, why = hh_to_pref(c, r)
    assert why == ""
    assert row["prompt"] == [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "With flour."},
        {"role": "user", "content": "And then?"},
    ]
    assert (row["chosen"], row["rejected"]) == ("Knead it and bake it.", "Who cares.")
    assert hh_to_pref(c, c)[1] == "identical replies"
    assert hh_to_pref(c, "\n\nHuman: Other?\n\nAssistant: x")[1] == "dialogues differ before the last reply"
    assert parse_hh("no markers at all") is None


def test_import_real_hh_pairs_and_gsm8k(tmp_path):
    m = import_data(HH, tmp_path / "prefs", "prefs", val_fraction=0.25)
    st = m["stats"]
    assert st["read"] == 40 and st["kept"] + sum(st["skipped"].values()) == 40 and st["kept"] >= 35
    ds = Dataset.open(tmp_path / "prefs", stage="prefs", columns=["prompt", "chosen", "rejected", "split"])
    rows = list(ds.iter_rows())
    assert rows[0]["prompt"][-1]["role"] == "user" and rows[0]["chosen"] != rows[0]["rejected"]
    assert m["inputs"][0]["path"].endswith(HH.name)  # lineage starts at the imported file
    assert import_data(HH, tmp_path / "prefs", "prefs", val_fraction=0.25)["fingerprint"] == m["fingerprint"]
    with pytest.raises(UsageError, match="different run"):
        import_data(HH, tmp_path / "prefs", "prefs", val_fraction=0.5)

    m = import_data(GSM8K, tmp_path / "sft", "sft")
    assert m["stats"]["kept"] == 120
    first = json.loads(GSM8K.read_text().splitlines()[0])
    table = pq.read_table(tmp_path / "sft" / "part-00000.parquet")
    assert table["messages"][0].as_py() == [
        {"role": "user", "content": first["question"]},
        {"role": "assistant", "content": first["answer"]},
    ]
    with pytest.raises(UsageError, match="no usable rows"):
        import_data(write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}]), tmp_path / "bad", "sft")


def test_item_batches_resume_at_the_same_position():
    a = ItemBatches(10, 3, lambda idx: idx, seed=7)
    for _ in range(5):  # crosses an epoch boundary (3 full batches per epoch)
        next(a)
    state = a.state_dict()
    want = [next(a) for _ in range(4)]
    b = ItemBatches(10, 3, lambda idx: idx, seed=7)
    b.load_state_dict(state)
    assert [next(b) for _ in range(4)] == want
    # 2 ranks see the two halves of what 1 rank with twice the micro-batch sees
    one = ItemBatches(12, 4, lambda idx: idx, seed=1)
    r0, r1 = (ItemBatches(12, 2, lambda idx: idx, seed=1, rank=r, world=2) for r in (0, 1))
    assert next(one) == next(r0) + next(r1)


def test_cli_import_sft_reward_score_dpo(tmp_path):
    run = CliRunner().invoke
    ck = tiny_checkpoint(tmp_path / "ck", max_seq_len=128)
    r = run(app, ["data", "import", str(GSM8K), "-o", str(tmp_path / "sft_ds"), "--format", "sft"])
    assert r.exit_code == 0, r.output
    assert "imported 120 of 120 rows" in r.output
    train = [
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--micro-batch",
        "2",
        "--warmup",
        "1",
        "--eval-every",
        "2",
        "--max-len",
        "128",
        "--val-fraction",
        "0.2",
    ]
    r = run(app, ["sft", str(tmp_path / "sft_ds"), "--from", str(ck), "-o", str(tmp_path / "sft"), *train])
    assert r.exit_code == 0, r.output
    assert "finished" in r.output and "val_loss" in r.output

    prefs = write_jsonl(tmp_path / "prefs.jsonl", synthetic_prefs(40))
    r = run(app, ["reward", str(prefs), "--from", str(tmp_path / "sft"), "-o", str(tmp_path / "rm"), *train])
    assert r.exit_code == 0, r.output
    assert "val_accuracy" in r.output
    r = run(app, ["reward", "score", str(tmp_path / "rm"), str(prefs), "-o", str(tmp_path / "scored")])
    assert r.exit_code == 0, r.output
    rows, _ = read_rows(tmp_path / "scored")
    assert len(rows) == 40 and isinstance(rows[0]["reward_chosen"], float) and "reward_rejected" in rows[0]

    r = run(
        app,
        [
            "dpo",
            str(prefs),
            "--from",
            str(tmp_path / "sft"),
            "-o",
            str(tmp_path / "dpo"),
            "--beta",
            "0.2",
            "--loss-type",
            "ipo",
            "--cache-ref",
            *train,
        ],
    )
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "dpo" / "_manifest.json").read_text())
    assert man["config"]["beta"] == 0.2 and man["config"]["loss_type"] == "ipo"
    assert "rewards/accuracies" in json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
