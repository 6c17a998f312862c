"""Local lm-eval task YAMLs over the bundled fixtures (no downloads): MMLU slice as multiple choice,
a GSM8K-style generative task, and a loglikelihood_rolling perplexity task."""

from __future__ import annotations

import json
from pathlib import Path

FIX = Path(__file__).resolve().parents[1] / "fixtures"
SUBJECTS = ("anatomy", "astronomy")


def write_tasks(d: Path, n_ppl: int = 8) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    mmlu = FIX / "mmlu"
    test = ", ".join(str(mmlu / "val" / f"{s}_val.csv") for s in SUBJECTS)
    dev = ", ".join(str(mmlu / "dev" / f"{s}_dev.csv") for s in SUBJECTS)
    (d / "mmlu_local.yaml").write_text(
        f"""task: mmlu_local
dataset_path: csv
dataset_kwargs:
  data_files:
    test: [{test}]
    dev: [{dev}]
  column_names: [question, A, B, C, D, answer]
test_split: test
fewshot_split: dev
fewshot_config: {{sampler: first_n}}
output_type: multiple_choice
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{['A','B','C','D'].index(answer)}}}}"
target_delimiter: " "
metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}}, {{metric: acc_norm, aggregation: mean, higher_is_better: true}}]
metadata: {{version: 1.0}}
"""
    )
    gsm = FIX / "gsm8k_train_head120.jsonl"
    rows = [json.loads(x) for x in gsm.read_text().splitlines() if x.strip()]
    (d / "gsm_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[100:]))
    (d / "gsm_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:100]))
    (d / "gsm8k_local.yaml").write_text(
        f"""task: gsm8k_local
dataset_path: json
dataset_kwargs: {{data_files: {{test: {d / "gsm_test.jsonl"}, train: {d / "gsm_train.jsonl"}}}}}
test_split: test
fewshot_split: train
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
generation_kwargs: {{until: ["Question:", "</s>"], do_sample: false, temperature: 0.0, max_gen_toks: 8}}
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true, ignore_case: true, ignore_punctuation: false, regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]}}
filter_list:
  - name: strict-match
    filter: [{{function: regex, regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"}}, {{function: take_first}}]
  - name: flexible-extract
    filter: [{{function: regex, group_select: -1, regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"}}, {{function: take_first}}]
metadata: {{version: 3.0}}
"""
    )
    text = (FIX / "tinystories_valid_head_300k.txt").read_text(encoding="utf-8").split("\n\n")
    docs = [t.strip() for t in text if t.strip()][:n_ppl]
    (d / "ppl.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    (d / "ppl_local.yaml").write_text(
        f"""task: ppl_local
dataset_path: json
dataset_kwargs: {{data_files: {{test: {d / "ppl.jsonl"}}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list: [{{metric: word_perplexity}}, {{metric: byte_perplexity}}, {{metric: bits_per_byte}}]
metadata: {{version: 1.0}}
"""
    )
    return d
