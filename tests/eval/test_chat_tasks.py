"""`--chat` for llmctl's own `mc` and `exact_match` tasks against lm-eval's `--apply_chat_template
--fewshot_as_multiturn` on an equivalent local YAML task, token for token: lm-eval's own `hf` model
builds and encodes the reference prompts (its `_encode_pair` and `tok_encode`), for llmctl's chat
template (a checkpoint, referenced by its export) and a Hugging Face model's (a ChatML Qwen2 dir)."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from eval_helpers import tiny_checkpoint
from hf_helpers import qwen2_chat_dir

from llmctl.eval.lm import load_lm
from llmctl.eval.tasks import exact_match as em
from llmctl.eval.tasks import mc

lm_eval = pytest.importorskip("lm_eval")
os.environ["HF_DATASETS_OFFLINE"] = "1"

MC_VAL = [
    ("What is two plus two?", "three", "four", "five", "six", "B"),
    ("Which one is blue?", "the sky", "grass", "the sun", "snow", "A"),
    ("What is a cat?", "a plant", "a rock", "an animal", "a star", "C"),
]
MC_DEV = [
    ("What is one plus one?", "two", "one", "zero", "four", "A"),
    ("Which one is hot?", "ice", "snow", "rain", "fire", "D"),
]
EM_TEST = [
    {"question": "What is 3 plus 4?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "What is 2 times 5?", "answer": "#### 10"},
]
EM_TRAIN = [
    {"question": "What is 1 plus 1?", "answer": "1 + 1 = 2\n#### 2"},
    {"question": "What is 6 minus 2?", "answer": "#### 4"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from llmctl.export.hf import export_hf

    tmp = tmp_path_factory.mktemp("chat_tasks")
    data = tmp / "data"
    (data / "val").mkdir(parents=True)
    (data / "dev").mkdir()
    for name, rows in (("val/toy_val.csv", MC_VAL), ("dev/toy_dev.csv", MC_DEV)):
        with (data / name).open("w", newline="") as f:
            csv.writer(f).writerows(rows)
    for name, rows in (("em_test.jsonl", EM_TEST), ("em_train.jsonl", EM_TRAIN)):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    inc = tmp / "tasks"
    inc.mkdir()
    (inc / "toy_mc.yaml").write_text(
        f"""task: toy_mc
dataset_path: csv
dataset_kwargs:
  data_files: {{test: [{data / "val/toy_val.csv"}], dev: [{data / "dev/toy_dev.csv"}]}}
  column_names: [question, A, B, C, D, answer]
test_split: test
fewshot_split: dev
fewshot_config: {{sampler: first_n}}
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about toy.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{['A','B','C','D'].index(answer)}}}}"
target_delimiter: " "
metric_list: [{{metric: acc}}, {{metric: acc_norm}}]
metadata: {{version: 1.0}}
"""
    )
    (inc / "toy_em.yaml").write_text(
        f"""task: toy_em
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data / "em_test.jsonl"}, train: {data / "em_train.jsonl"}}}}}
test_split: test
fewshot_split: train
fewshot_config: {{sampler: first_n}}
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["Question:"], do_sample: false, temperature: 0.0, max_gen_toks: 2}}
metric_list: [{{metric: exact_match}}]
metadata: {{version: 1.0}}
"""
    )
    ck = tiny_checkpoint(tmp / "ck", tmp, seed=5, n_layer=2, n_head=2, d_model=32, max_seq_len=512)
    ref = tmp / "ck_hf"
    export_hf(ck, ref, split_special_tokens=False)  # lm-eval's hf then reads the template's markers as special ids
    qwen = qwen2_chat_dir(tmp / "qwen")
    return data, inc, [(ck, ref), (qwen, qwen)]


def _reference(ref, inc, task):
    """lm-eval's own chat prompts for `task` (2 shots as earlier turns) and its hf model."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    hflm = HFLM(pretrained=str(ref), dtype="float32", batch_size=4, device="cpu")
    r = lm_eval.simple_evaluate(
        model=hflm,
        tasks=[task],
        num_fewshot=2,
        task_manager=TaskManager(include_path=str(inc), include_defaults=False),
        apply_chat_template=True,
        fewshot_as_multiturn=True,
        log_samples=True,
    )
    return hflm, r


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, 1], ids=["llmctl-template", "hf-chatml"])
def test_mc_chat_requests_equal_lm_eval_token_for_token(setup, which):
    data, inc, models = setup
    model, ref = models[which]
    lm = load_lm(model)
    cfg = mc.MCConfig(data=str(data / "val"), shots=2, chat=True)
    items, requests, _ = mc.build_requests(lm, cfg)
    hflm, r = _reference(ref, inc, "toy_mc")
    docs = sorted(r["samples"]["toy_mc"], key=lambda d: d["doc_id"])
    want = [hflm._encode_pair(ctx, cont) for d in docs for ctx, cont in d["arguments"]]
    assert [(list(c), list(x)) for c, x in want] == requests
    ctx0 = docs[0]["arguments"][0][0]
    assert items[0]["context"] == ctx0 and ctx0.count("Answer:") == 3  # two shots as turns, then the question
    assert [a[1] for a in docs[0]["arguments"]] == items[0]["continuations"] == ["A", "B", "C", "D"]
    rows, _, _ = mc.run(lm, cfg, batch_size=3)
    got = {x["metric"]: x["value"] for x in rows}
    assert got["acc"] == r["results"]["toy_mc"]["acc,none"]
    assert got["acc_norm"] == r["results"]["toy_mc"]["acc_norm,none"]


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, 1], ids=["llmctl-template", "hf-chatml"])
def test_exact_match_chat_prompts_equal_lm_eval_token_for_token(setup, which):
    data, inc, models = setup
    model, ref = models[which]
    lm = load_lm(model)
    shots = [json.loads(x) for x in (data / "em_train.jsonl").read_text().splitlines()]
    ours = [em.prompt_ids(lm, r["question"], shots, "chat") for r in EM_TEST]
    hflm, r = _reference(ref, inc, "toy_em")
    docs = sorted(r["samples"]["toy_em"], key=lambda d: d["doc_id"])
    ctxs = [d["arguments"][0][0] for d in docs]
    assert all(c.count(s["question"]) == 1 for c in ctxs for s in shots)
    assert [hflm.tok_encode(c) for c in ctxs] == ours


@pytest.mark.parametrize("which", [0, 1], ids=["llmctl-template", "hf-chatml"])
def test_exact_match_chat_reply_ends_at_the_end_of_turn_token(setup, which):
    """A model whose head always prefers the template's end-of-turn token (`<|end|>`, not the eos,
    for llmctl's template; `<|im_end|>` for ChatML) replies nothing under --chat: generation stopped there."""
    data, _, models = setup
    lm = load_lm(models[which][0])
    end = lm.codec.encode_special("<|end|>" if which == 0 else "<|im_end|>")
    assert len(end) == 1 and (which == 1 or end[0] != lm.codec.eos_id)
    net = lm.model  # llmctl's Transformer, or transformers' Qwen2ForCausalLM
    head = net.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[end[0]] = 1e4
    net.lm_head = biased
    cfg = em.ExactMatchConfig(data=str(data / "em_test.jsonl"), chat=True, max_new_tokens=6)
    rows, _, samples = em.run(lm, cfg, batch_size=2)
    out = samples.rows
    assert [s["new_tokens"] for s in out] == [0, 0] and [s["output"] for s in out] == ["", ""]
    assert {r["metric"]: r["value"] for r in rows}["mean_new_tokens"] == 0.0
    assert lm.codec.chat_text is not None and out[0]["prompt"].strip()
