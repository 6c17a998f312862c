"""SFT: the masked loss against an independent computation, packing without leaks, truncation, learning."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from align_helpers import GSM8K, tiny_checkpoint, tokenizer, write_jsonl

from llmctl.data.chat_data import encode_conversation, fit, read_rows
from llmctl.errors import UsageError
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.tokenizer.chat import encode_chat
from llmctl.train.sft import IGNORE, SFTConfig, collate_windows, encode_sft, make_sft_evaluate, run_sft, sft_loss


def _convs():
    return [
        [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "It is 5."}],
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Name a color."},
            {"role": "assistant", "content": "Blue"},
            {"role": "user", "content": "Another?"},
            {"role": "assistant", "content": "Red, then green."},
        ],
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"}],
    ]


def _model(tok, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, max_seq_len=128)).eval()


def test_sft_loss_equals_mean_nll_over_response_tokens_of_each_example_alone():
    tok = tokenizer()
    model = _model(tok)
    examples = [encode_conversation(tok, c, 128) for c in _convs()]
    batch = collate_windows(examples, [[0, 1], [2]], tok.pad_id)  # two examples packed in row 0, padding in row 1
    loss, m = sft_loss(model, batch)

    # independent: run each conversation alone (no packing, no padding) and score assistant tokens
    total, count = 0.0, 0
    for c in _convs():
        ids, mask = encode_chat(tok, c)
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([ids]))[0].double(), -1)
        for t in range(1, len(ids)):
            if mask[t]:
                total -= logp[t - 1, ids[t]].item()
                count += 1
    assert m["response_tokens"] == count
    assert loss.item() == pytest.approx(total / count, abs=1e-5)


def test_only_assistant_tokens_and_their_end_are_targets():
    tok = tokenizer()
    e = encode_conversation(tok, _convs()[0], 128)
    batch = collate_windows([e], [[0]], tok.pad_id)
    targets = [t for t in batch["labels"][0].tolist() if t != IGNORE]
    assert targets == tok.encode("It is 5.") + [tok.special_ids["<|end|>"]]


def test_a_batch_without_trainable_tokens_is_an_error():
    tok = tokenizer()
    model = _model(tok)
    e = encode_conversation(tok, _convs()[0], 128)
    batch = collate_windows([e], [[0]], tok.pad_id)
    batch["labels"][:] = IGNORE
    with pytest.raises(UsageError, match="no trainable"):
        sft_loss(model, batch)
    with pytest.raises(UsageError, match="expected SFT columns"):
        encode_sft(tok, [{"text": "no chat here"}], 128, 0.0, 0)


def test_truncation_policy_cuts_prompt_left_then_response_right():
    p, r = list(range(10)), list(range(100, 106))
    e = fit(p, [False] * 10, r, [True] * 6, 12)  # prompt keeps max(12 - 6, 6) = 6 newest tokens
    assert e.truncated and e.ids == p[4:] + r and e.mask == [False] * 6 + [True] * 6
    e = fit(p, [False] * 10, list(range(100, 120)), [True] * 20, 12)  # long response: prompt keeps 6, response 6
    assert e.ids == p[4:] + list(range(100, 106))
    assert not fit(p, [False] * 10, r, [True] * 6, 16).truncated


def test_truncation_is_counted_and_split_is_stable():
    tok = tokenizer()
    rows, _ = read_rows(GSM8K)
    rows = [{"prompt": r["question"], "response": r["answer"]} for r in rows[:40]]
    tr, val, counts = encode_sft(tok, rows, 64, 0.25, 0)
    assert counts["truncated"] == sum(
        len(tok.encode(r["prompt"])) + len(tok.encode(r["response"])) + 4 > 64 for r in rows
    )
    assert all(len(e.ids) <= 64 for e in tr + val)
    tr2, val2, _ = encode_sft(tok, rows[::-1], 64, 0.25, 0)  # the split does not depend on row order
    assert sorted(map(tuple, (e.ids for e in val))) == sorted(map(tuple, (e.ids for e in val2)))
    assert 0 < len(val) < len(rows)


def test_sft_lowers_held_out_response_loss(tmp_path):
    tok = tokenizer()
    ck = tiny_checkpoint(tmp_path / "ck")
    rows = [{"prompt": r["question"], "response": r["answer"]} for r in map(json.loads, GSM8K.read_text().splitlines())]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    cfg = SFTConfig(max_len=512, val_fraction=0.2)
    cfg.train.steps, cfg.train.batch_size, cfg.train.micro_batch, cfg.train.lr = 12, 4, 4, 3e-3
    cfg.train.warmup_steps, cfg.train.eval_every, cfg.train.log_every = 2, 12, 100
    tr, val, _ = encode_sft(tok, rows, 512, 0.2, cfg.train.seed)
    from llmctl.model.checkpoint import load_checkpoint

    model0 = load_checkpoint(ck)[0]
    with torch.no_grad():
        before = make_sft_evaluate(val, 512, 4, tok.pad_id)(model0)["val_loss"]
    summary = run_sft(data, ck, tmp_path / "run", cfg)
    assert summary["finished"] and summary["data"]["val"] == len(val)
    assert summary["val_loss"] < before - 0.5, (before, summary["val_loss"])
    # --batch-size counts packed windows (as TRL with packing): a step of 4 windows holds more examples
    d = summary["data"]
    assert (
        d["examples_per_step"] == pytest.approx(4 * d["train"] / d["windows"], abs=0.01) and d["windows"] < d["train"]
    )
    # the run writes a checkpoint generate/eval/export can load, and a run manifest with lineage
    trained = load_checkpoint(tmp_path / "run")[0]
    assert trained.cfg.vocab_size == tok.vocab_size
    man = json.loads((tmp_path / "run" / "_manifest.json").read_text())
    assert man["stage"] == "sft" and len(man["inputs"]) == 2
    before_rerun = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
    again = run_sft(data, ck, tmp_path / "run", cfg)  # a finished run: reported complete, nothing rewritten
    assert again["complete"] and again["val_loss"] == summary["val_loss"] and again["step"] == 12
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before_rerun
    with pytest.raises(UsageError, match="different config"):
        run_sft(data, ck, tmp_path / "run", SFTConfig(**{**vars(cfg), "max_len": 256}))


def test_max_len_beyond_the_model_context_is_a_one_line_error(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck", max_seq_len=64)
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "Say hi.", "response": "Hi there."}) + "\n")
    cfg = SFTConfig(max_len=128)
    with pytest.raises(UsageError, match="max_len 128 exceeds the model's max_seq_len 64"):
        run_sft(data, ck, tmp_path / "run", cfg)
    assert not (tmp_path / "run").exists()
