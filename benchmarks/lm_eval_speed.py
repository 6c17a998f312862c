"""Seconds of `--task lm-eval:...` (llmctl's model under lm-eval) against lm-eval's own `hf` model.

    .venv/bin/python benchmarks/lm_eval_speed.py [--rounds 3] [--limit 40] [--d-model 256] [--layers 4]
                                                 [--seq 512] [--shots 1] [--gen-tokens 32] [--out FILE.json]

One process: a random llmctl model (vocab 512, `--layers` x `--d-model`, context `--seq`) saved as a
checkpoint and exported with `llmctl.export.hf.export_hf`; four local lm-eval tasks over the
bundled fixtures (tests/eval/lm_eval_helpers.py: MMLU slice multiple choice over the letters and
over the choices' texts, GSM8K-style generation with `--gen-tokens` new tokens,
loglikelihood_rolling perplexity). Each round runs
`lm_eval.simple_evaluate` once on llmctl's adapter (`llmctl.eval.tasks.lm_eval_task.harness_lm`
over the checkpoint) and once on `model="hf"` (the exported dir, float32, same batch size),
alternating which goes first, each loading its model inside the timing; a warm-up run of each
first. Prints and writes the median wall seconds of each (and its process CPU seconds), the ratio
hf / llmctl (> 1: llmctl faster) and the load average before and after, with torch's thread count
fixed; the last line is the summary. The figures mean something only on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "eval")]
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from eval_helpers import tiny_checkpoint  # noqa: E402
from lm_eval_helpers import write_tasks  # noqa: E402

TASKS = ["mmlu_local", "mmlu_text_local", "gsm8k_local", "ppl_local"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    import lm_eval
    from lm_eval.tasks import TaskManager

    from llmctl.eval.lm import load_lm
    from llmctl.eval.tasks.lm_eval_task import harness_lm
    from llmctl.export.hf import export_hf

    tmp = Path(tempfile.mkdtemp(prefix="lm_eval_speed_"))
    ck = tiny_checkpoint(
        tmp / "ck", tmp, seed=0, n_layer=a.layers, n_head=max(1, a.d_model // 64), d_model=a.d_model, max_seq_len=a.seq
    )
    hf = tmp / "hf"
    export_hf(ck, hf)
    inc = write_tasks(tmp / "tasks", n_ppl=min(a.limit, 20))
    y = (inc / "gsm8k_local.yaml").read_text().replace("max_gen_toks: 8", f"max_gen_toks: {a.gen_tokens}")
    (inc / "gsm8k_local.yaml").write_text(y)
    m = (inc / "mmlu_local.yaml").read_text().replace("task: mmlu_local", "task: mmlu_text_local")
    m = m.replace('doc_to_choice: ["A", "B", "C", "D"]', 'doc_to_choice: "{{[A, B, C, D]}}"')
    (inc / "mmlu_text_local.yaml").write_text(m)  # the choices' texts: multi-token continuations
    tm = TaskManager(include_path=str(inc), include_defaults=False)
    kw = dict(
        tasks=TASKS,
        num_fewshot=a.shots,
        limit=a.limit,
        task_manager=tm,
        apply_chat_template=False,
        fewshot_as_multiturn=False,
        log_samples=False,
    )

    def llmctl_run() -> dict:
        return lm_eval.simple_evaluate(model=harness_lm(load_lm(ck), a.batch_size), **kw)  # loading timed, as hf's

    def hf_run() -> dict:
        return lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={hf},dtype=float32", batch_size=a.batch_size, device="cpu", **kw
        )

    load_before = os.getloadavg()
    llmctl_run(), hf_run()  # warm-up: dataset caches, imports
    secs: dict[str, list[float]] = {"llmctl": [], "hf": []}
    cpu: dict[str, list[float]] = {"llmctl": [], "hf": []}
    results = {}
    for r in range(a.rounds):
        order = [("llmctl", llmctl_run), ("hf", hf_run)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn()["results"]
            secs[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in secs.items()}
    same = {
        t: all(results["llmctl"][t].get(k) == v for k, v in results["hf"][t].items() if k.startswith(("acc", "exact")))
        for t in TASKS
    }
    rec = {
        "seconds": secs,
        "median_seconds": med,
        "cpu_seconds": cpu,
        "ratio_hf_over_llmctl": med["hf"] / med["llmctl"],
        "cpu_ratio_hf_over_llmctl": statistics.median(cpu["hf"]) / statistics.median(cpu["llmctl"]),
        "decision_metrics_identical": same,
        "settings": vars(a),
        "loadavg_before": load_before,
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(rec, indent=1))
    la = " ".join(f"{x:.2f}" for x in rec["loadavg"])
    print(
        f"llmctl {med['llmctl']:.2f} s, hf {med['hf']:.2f} s (median of {a.rounds}): "
        f"ratio hf/llmctl {rec['ratio_hf_over_llmctl']:.2f} (CPU seconds {rec['cpu_ratio_hf_over_llmctl']:.2f}); "
        f"load average {la} (before: {' '.join(f'{x:.2f}' for x in load_before)}); "
        f"decision metrics identical: {all(same.values())}"
    )
    if a.out:
        Path(a.out).write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
