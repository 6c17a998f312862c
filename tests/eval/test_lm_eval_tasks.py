"""`--task lm-eval:NAME` against lm-eval's own `hf` model on the exported weights.

Decision metrics (acc, acc_norm, exact_match) and their stderrs must be equal; perplexities agree
within rtol 1e-6, not bit for bit: llmctl and transformers run different kernels and matmul shapes,
and llmctl sums log-probs in float64 where lm-eval's hf sums float32.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from eval_helpers import tiny_checkpoint
from lm_eval_helpers import write_tasks

from llmctl.errors import UsageError
from llmctl.eval.runner import EvalConfig, run_eval
from llmctl.store.dataset import Dataset

lm_eval = pytest.importorskip("lm_eval")
os.environ["HF_DATASETS_OFFLINE"] = "1"

TASKS = "lm-eval:mmlu_local,gsm8k_local,ppl_local"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from llmctl.export.hf import export_hf

    tmp = tmp_path_factory.mktemp("lmeval")
    ck = tiny_checkpoint(tmp / "ck", tmp, seed=3, n_layer=2, n_head=2, d_model=32, max_seq_len=256)
    hf = tmp / "hf"
    export_hf(ck, hf)
    return ck, hf, write_tasks(tmp / "tasks", n_ppl=4), tmp


def _cfg(inc, bs=8, **kw):
    cfg = EvalConfig(tasks=[TASKS], batch_size=bs)
    cfg.lm_eval.include = str(inc)
    cfg.lm_eval.shots = 1
    cfg.lm_eval.limit = 6
    for k, v in kw.items():
        setattr(cfg.lm_eval, k, v)
    return cfg


def _table(m):
    return {(r["task"], r["metric"]): (r["value"], r["stderr"], r["n"]) for r in m["stats"]["results"]}


@pytest.mark.slow
def test_matches_lm_eval_hf(setup):
    from lm_eval.tasks import TaskManager

    ck, hf, inc, tmp = setup
    ours = _table(run_eval(hf, tmp / "res_hf_dir", _cfg(inc)))
    ours_ck = _table(run_eval(ck, tmp / "res_ck", _cfg(inc)))
    ref = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf},dtype=float32",
        tasks=["mmlu_local", "gsm8k_local", "ppl_local"],
        num_fewshot=1,
        limit=6,
        batch_size=4,
        device="cpu",
        task_manager=TaskManager(include_path=str(inc), include_defaults=False),
        apply_chat_template=False,
        fewshot_as_multiturn=False,
    )
    checked = 0
    for task, res in ref["results"].items():
        for key, val in res.items():
            if "," not in key or not isinstance(val, float):
                continue
            for table in (ours, ours_ck):
                if "_stderr," in key:
                    m = key.replace("_stderr,", ",")
                    got = table[(task, m)][1]
                else:
                    got = table[(task, key)][0]
                if key.split(",")[0].split("_stderr")[0] in ("acc", "acc_norm", "exact_match"):
                    assert got == val, (task, key, got, val)
                else:
                    assert math.isclose(got, val, rel_tol=1e-6), (task, key, got, val)
                checked += 1
    assert {t for t, _ in ours} == {"mmlu_local", "gsm8k_local", "ppl_local", "core"}
    assert checked >= 2 * 10
    assert ours[("mmlu_local", "acc,none")][2] == 6
    s = Dataset.open(tmp / "res_ck" / "_samples" / "lm_eval")
    assert s.num_rows == 6 + 2 * 6 + 4  # gsm8k: one row per filter


@pytest.mark.slow
def test_batch_size_does_not_change_results(setup):
    ck, _, inc, tmp = setup
    a = run_eval(ck, tmp / "bs1", _cfg(inc, bs=1, limit=5))
    b = run_eval(ck, tmp / "bs5", _cfg(inc, bs=5, limit=5))
    assert _table(a) == _table(b)


@pytest.mark.slow
def test_unknown_task_and_missing_dataset_are_one_line(setup, tmp_path):
    ck, _, inc, _ = setup
    cfg = _cfg(inc)
    cfg.tasks = ["lm-eval:mmlu_locl"]
    with pytest.raises(UsageError, match="unknown lm-eval task mmlu_locl.*mmlu_local"):
        run_eval(ck, tmp_path / "x", cfg)
    assert not (tmp_path / "x").exists()
    d = tmp_path / "inc"
    d.mkdir()
    (d / "gone.yaml").write_text(
        "task: gone_task\ndataset_path: no-such-org/no-such-dataset\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: [a, b]\ndoc_to_target: 0\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmctl",
            "eval",
            str(ck),
            "-o",
            str(tmp_path / "y"),
            "--task",
            "lm-eval:gone_task",
            "--lm-eval-include",
            str(d),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "no-such-org/no-such-dataset" in r.stderr and "dataset_path: json" in r.stderr
    assert not (tmp_path / "y").exists()


def test_core_row_over_the_mc_tasks_that_ran(setup):
    from lm_eval_helpers import FIX

    ck, _, inc, tmp = setup
    cfg = _cfg(inc, limit=4)
    cfg.tasks = ["mc", "lm-eval:mmlu_local,ppl_local"]
    cfg.mc.data, cfg.mc.limit = str(FIX / "mmlu"), 4
    m = run_eval(ck, tmp / "core", cfg)
    t = _table(m)
    assert t[("mc", "chance")][0] == t[("mmlu_local", "chance")][0] == 0.25  # four choices everywhere
    want = ((t[("mc", "acc")][0] - 0.25) / 0.75 + (t[("mmlu_local", "acc,none")][0] - 0.25) / 0.75) / 2
    assert t[("core", "centered_acc")][0] == pytest.approx(want)
    assert t[("core", "centered_acc")][2] == 2
    assert m["stats"]["core_tasks"] == ["mc", "mmlu_local"]
    assert Dataset.open(tmp / "core").num_rows == len(m["stats"]["results"])


@pytest.mark.slow
def test_chat_prompts_equal_lm_eval_hf_token_for_token(setup):
    """--chat against lm-eval's --apply_chat_template --fewshot_as_multiturn on a dir exported with
    split_special_tokens=False (the default export reads markers typed in text as text, so lm-eval's
    hf model would see `<|user|>` as characters there)."""
    import json as _json

    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    from llmctl.eval.lm import load_lm
    from llmctl.export.hf import export_hf

    ck, _, inc, tmp = setup
    hf = tmp / "hf_nosplit"
    if not hf.exists():
        export_hf(ck, hf, split_special_tokens=False)
    lm = load_lm(ck)
    tok = AutoTokenizer.from_pretrained(hf)
    msgs = [
        {"role": "user", "content": "Question: 2+2?\nAnswer:"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Question: 3+3?\nAnswer:"},
    ]
    text = lm.codec.chat_text(msgs, True)
    assert text == tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert lm.codec.encode_special(text) == lm.codec.chat(msgs) == tok.encode(text, add_special_tokens=False)

    cfg = _cfg(inc, limit=4)
    cfg.tasks, cfg.lm_eval.shots, cfg.lm_eval.chat = ["lm-eval:mmlu_local,gsm8k_local"], 2, True
    ours = run_eval(ck, tmp / "chat", cfg)
    ref = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf},dtype=float32",
        tasks=["mmlu_local", "gsm8k_local"],
        num_fewshot=2,
        limit=4,
        batch_size=4,
        device="cpu",
        task_manager=TaskManager(include_path=str(inc), include_defaults=False),
        apply_chat_template=True,
        fewshot_as_multiturn=True,
        log_samples=True,
    )
    rows = Dataset.open(tmp / "chat" / "_samples" / "lm_eval").read_shard(0).to_pylist()
    n_ctx = 0
    for task, docs in ref["samples"].items():
        mine = {(r["doc_id"], r["filtered_resps"]): r for r in rows if r["task"] == task}
        for d in docs:
            r = next(v for (i, _), v in mine.items() if i == d["doc_id"])
            args = _json.loads(r["arguments"])
            theirs = [[a for a in x] for x in d["arguments"]]
            assert [a[0] for a in args] == [a[0] for a in theirs]  # the same prompt text
            for a in theirs:
                ctx = a[0]
                assert "<|user|>" in ctx and "<|assistant|>" in ctx
                assert tok.encode(ctx, add_special_tokens=False) == lm.codec.encode_special(ctx)
                n_ctx += 1
    assert n_ctx >= 4 * 4 + 4
    t = _table(ours)
    for task, res in ref["results"].items():
        for key, val in res.items():
            if "," in key and isinstance(val, float) and key.split(",")[0] in ("acc", "acc_norm", "exact_match"):
                assert t[(task, key)][0] == val, (task, key)
