"""lm-evaluation-harness's `local-completions` model pointed at the server scores like `llmctl eval --task mc`."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from serve_helpers import CTX

from llmctl.eval.runner import EvalConfig, run_eval
from llmctl.export.hf import export_hf

MMLU = Path(__file__).resolve().parents[1] / "fixtures" / "mmlu"

# the MMLU prompt of lm-eval's mmlu task (0-shot, letters), over a local CSV
TASK_YAML = """task: serve_mmlu
dataset_path: csv
dataset_kwargs:
  data_files:
    test: {test}
  column_names: [question, A, B, C, D, answer]
test_split: test
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about anatomy.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(answer.strip())}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


@pytest.mark.slow
def test_lm_eval_local_completions_equals_llmctl_eval(served, checkpoint, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    url, _ = served
    for k, v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}.items():
        monkeypatch.setenv(k, v)
    with (MMLU / "val" / "anatomy_val.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[:12]
    test = tmp_path / "mmlu" / "anatomy_test.csv"
    test.parent.mkdir()
    with test.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "serve_mmlu.yaml").write_text(TASK_YAML.format(test=test))
    hf = export_hf(checkpoint, tmp_path / "hf_model")
    args = (
        f"base_url={url}/v1/completions,model=tiny,tokenizer_backend=huggingface,tokenizer={hf},"
        f"max_length={CTX},num_concurrent=4,batch_size=3"
    )
    r = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=args,
        tasks=["serve_mmlu"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        num_fewshot=0,
        log_samples=True,
    )
    theirs = r["results"]["serve_mmlu"]
    cfg = EvalConfig(tasks=["mc"], batch_size=4, progress=False)
    cfg.mc.data = str(test)
    ours = {x["metric"]: x["value"] for x in run_eval(checkpoint, tmp_path / "res", cfg)["stats"]["results"]}
    assert theirs["acc,none"] == pytest.approx(ours["acc"], abs=1e-9)
    assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"], abs=1e-9)
    # and the log-likelihood of every choice, not only the picks
    samples = sorted(r["samples"]["serve_mmlu"], key=lambda x: x["doc_id"])
    lls = [[float(x[0]) for x in s["filtered_resps"]] for s in samples]
    mine = pq.read_table(tmp_path / "res" / "_samples" / "mc" / "part-00000.parquet").to_pylist()
    assert lls == [pytest.approx(m["loglikelihoods"], abs=1e-4) for m in mine]
    assert len(lls) == 12 and 0 < ours["acc"] < 1
