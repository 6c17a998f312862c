"""Cross-check `llmctl eval` against lm-evaluation-harness and a plain transformers computation.

    .venv/bin/python benchmarks/eval_parity.py [--subjects anatomy astronomy ...] [--test-subjects formal_logic]
                                               [--limit 40] [--shots 0 5] [--reuse]

In one run: trains a small model for a minute on TinyStories (so log-likelihoods are far from
uniform and near-ties are rare), saves it as an llmctl checkpoint, exports it with
`llmctl.export.hf.export_hf`, then
1. MMLU: `llmctl eval --task mc` on the llmctl checkpoint vs lm-eval 0.4.13
   (`simple_evaluate(model="hf", ...)` on the exported directory, a local YAML task per subject
   written here with llmctl's prompt: lm-eval's MMLU format, " A".." D" continuations or the
   choice texts, first-n few-shot from dev/) on the first `--limit` val questions of `--subjects`
   and all test questions of `--test-subjects` (formal_logic: choices with ∨ ⊃ ≡ • ∀, where
   normalising by characters and by bytes differ). acc and acc_norm must be identical;
   per-request log-likelihoods (llmctl's from RESULTS/_samples/mc) are compared too (max |diff|),
   and the picks `mc.norm=bytes` would change are counted.
2. perplexity with llmctl's default settings vs lm-eval's `loglikelihood_rolling` (bits per
   byte, byte and word perplexity, and each document's log-likelihood); and the sliding-window
   option (`prefix=eos, stride=L/2`) vs a plain transformers computation (LlamaForCausalLM on the
   exported dir, windows written out here, fp64 cross-entropy): loss and bits per byte within 1e-4.

lm-eval is installed by this script into benchmarks/.venvs/lmeval (a .pth file reuses the
project's torch, so no second 800 MB wheel is fetched); run offline, see ../shared/PEERS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# a script here named like a standard-library module would shadow it: drop this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "benchmarks" / ".venvs" / "lmeval"
WORK = ROOT / "benchmarks" / ".work" / "eval_parity"
SHARED_DATA = Path(
    os.environ.get("LLMCTL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)  # ../shared/data beside the checkout
MMLU = SHARED_DATA / "eval/mmlu"
STORIES = SHARED_DATA / "tinystories/tinystories_valid_head.txt"
LM_EVAL_VERSION = "0.4.13"


def ensure_lmeval() -> Path:
    py = VENV / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import lm_eval"], capture_output=True).returncode == 0:
        return py
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    site = subprocess.run(
        [py, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    import site as _site

    Path(site, "llmctl_base.pth").write_text(_site.getsitepackages()[0] + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", f"lm-eval[hf]=={LM_EVAL_VERSION}"], check=True)
    return py


def stories(n: int, skip: int = 0) -> list[str]:
    docs = [d.strip() for d in STORIES.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    return docs[skip : skip + n]


def train_model(out: Path, steps: int, seed: int = 0) -> Path:
    print("training a small model ...", flush=True)
    from llmctl.model.checkpoint import save_checkpoint
    from llmctl.model.transformer import ModelConfig, Transformer, cross_entropy
    from llmctl.tokenizer.spm import Tokenizer, training_chunks

    torch.manual_seed(seed)
    train = stories(2000, skip=400)
    tok = Tokenizer.train((c for d in train for c in training_chunks(d)), 1024)
    tok.save(WORK / "tok")
    ids = [i for d in train for i in tok.encode(d) + [tok.eos_id]]
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=128, max_seq_len=256)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    data = torch.tensor(ids)
    t, b = 128, 16
    t0 = time.time()
    for step in range(steps):
        starts = torch.randint(0, len(data) - t - 1, (b,))
        x = torch.stack([data[s : s + t] for s in starts])
        y = torch.stack([data[s + 1 : s + t + 1] for s in starts])
        loss = cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  train step {step:4d} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    return save_checkpoint(out, model.eval(), cfg, tokenizer_dir=WORK / "tok")


TASK_YAML = """task: {name}
dataset_path: csv
dataset_kwargs:
  data_files:
    test: {test}
    dev: {dev}
  column_names: [question, A, B, C, D, answer]
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {subject}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\nAnswer:"
{choice_line}
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(answer.strip())}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

# llmctl's `--choices letters` (" A".." D", lm-eval's MMLU) and `--choices text` (" " + the choice text)
CHOICE_LINES = {"letters": 'doc_to_choice: ["A", "B", "C", "D"]', "text": 'doc_to_choice: "{{[A, B, C, D]}}"'}

PPL_YAML = """task: parity_ppl
dataset_path: text
dataset_kwargs:
  data_files:
    test: {files}
  sample_by: document
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""

DRIVER = r"""
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
a = json.loads(sys.argv[1])
tm = TaskManager(include_path=a["tasks_dir"])
out = {}
for shots in a["shots"]:
    r = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={a['model']},dtype=float32", tasks=a["tasks"],
                                task_manager=tm, device="cpu", batch_size=8, num_fewshot=shots, log_samples=True)
    out[str(shots)] = {"results": r["results"],
                       "lls": {t: [[float(x[0]) for x in s["filtered_resps"]] for s in sorted(r["samples"][t], key=lambda s: s["doc_id"])] for t in a["tasks"]}}
r = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={a['model']},dtype=float32", tasks=["parity_ppl"],
                            task_manager=tm, device="cpu", batch_size=8, log_samples=True)
out["ppl"] = r["results"]["parity_ppl"]
out["ppl_lls"] = [json.loads(json.dumps(s["filtered_resps"], default=float)) for s in
                  sorted(r["samples"]["parity_ppl"], key=lambda s: s["doc_id"])]
json.dump(out, open(a["out"], "w"))
"""


def subject_file(subject: str, split: str, limit: int) -> Path:
    """The MMLU CSV both sides read: the first `limit` questions (CSV records, not lines) of the split."""
    import csv

    src = MMLU / split / f"{subject}_{split}.csv"
    if not limit:
        return src
    with src.open(newline="", encoding="utf-8") as f:
        recs = list(csv.reader(f))[:limit]
    out = WORK / f"mmlu_{split}" / src.name
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(recs)
    return out


def run_lmeval(py: Path, hf_dir: Path, entries: list[tuple[str, Path]], shots: list[int], doc_files: list[Path]):
    tasks_dir = WORK / "lmeval_tasks"
    shutil.rmtree(tasks_dir, ignore_errors=True)
    tasks_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for s, test in entries:
        for mode, line in CHOICE_LINES.items():
            name = f"parity_mmlu_{mode}_{s}"
            (tasks_dir / f"{name}.yaml").write_text(
                TASK_YAML.format(
                    name=name,
                    test=test,
                    dev=MMLU / "dev" / f"{s}_dev.csv",
                    subject=s.replace("_", " "),
                    choice_line=line,
                )
            )
            names.append(name)
    (tasks_dir / "parity_ppl.yaml").write_text(PPL_YAML.format(files=json.dumps([str(f) for f in doc_files])))
    out = WORK / "lmeval_results.json"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_CACHE": str(WORK / "hf_datasets_cache"),
    }
    args = {"tasks_dir": str(tasks_dir), "tasks": names, "model": str(hf_dir), "shots": shots, "out": str(out)}
    t0 = time.time()
    subprocess.run([py, "-c", DRIVER, json.dumps(args)], check=True, env=env)
    return json.loads(out.read_text()), time.time() - t0


def plain_transformers_ppl(hf_dir: Path, texts: list[str], stride: int) -> tuple[float, float]:
    """Loss and bits/byte with LlamaForCausalLM and fp64 cross-entropy, windows written out here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    L = model.config.max_position_embeddings
    nll, n_tok, n_bytes = 0.0, 0, 0
    with torch.no_grad():
        for text in texts:
            seq = [tok.eos_token_id] + tok.encode(text, add_special_tokens=False)
            n_bytes += len(text.encode("utf-8"))
            done = 1  # seq[1:] are the targets
            while done < len(seq):
                end = min(len(seq), done + (L if done == 1 else stride))
                start = max(0, end - 1 - L)
                logits = model(torch.tensor([seq[start : end - 1]])).logits[0].double()
                k = end - done
                nll += torch.nn.functional.cross_entropy(
                    logits[-k:], torch.tensor(seq[done:end]), reduction="sum"
                ).item()
                n_tok += k
                done = end
    return nll / n_tok, nll / n_bytes / math.log(2)


def _flat_float(x):
    while isinstance(x, (list, tuple)):
        x = x[0]
    return float(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--subjects",
        nargs="+",
        default=["anatomy", "astronomy", "high_school_geography", "marketing"],
        help="MMLU val subjects (first --limit questions each)",
    )
    ap.add_argument("--test-subjects", nargs="*", default=["formal_logic"], help="MMLU test subjects (all questions)")
    ap.add_argument("--limit", type=int, default=40, help="questions per val subject")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--docs", type=int, default=40, help="TinyStories documents for perplexity")
    ap.add_argument("--steps", type=int, default=200, help="training steps of the small model")
    ap.add_argument("--reuse", action="store_true", help="reuse the model trained by a previous run")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from llmctl.data.document import DOCUMENT_SCHEMA
    from llmctl.eval.runner import EvalConfig, run_eval
    from llmctl.export.hf import export_hf
    from llmctl.store.dataset import StageOutput

    WORK.mkdir(parents=True, exist_ok=True)
    py = ensure_lmeval()
    if args.reuse and (WORK / "ckpt" / "model.safetensors").is_file():
        ck = WORK / "ckpt"
        print(f"reusing {ck}")
    else:
        ck = train_model(WORK / "ckpt", args.steps)
    hf = export_hf(ck, WORK / "hf", overwrite=True)

    texts = [t * 3 for t in stories(args.docs)]  # ~3x longer than the 256-token context: windows matter
    doc_dir = WORK / "docs_txt"
    doc_dir.mkdir(exist_ok=True)
    files = []
    for i, t in enumerate(texts):
        f = doc_dir / f"doc{i:03d}.txt"
        f.write_text(t, encoding="utf-8")
        files.append(f)

    class _Cfg:
        __dataclass_fields__: dict = {}

    shutil.rmtree(WORK / "docs", ignore_errors=True)
    so = StageOutput(WORK / "docs", "filter", _Cfg(), inputs=[])
    w = so.shard_writer("part-00000.parquet", DOCUMENT_SCHEMA)
    for i, t in enumerate(texts):
        w.write({**{f.name: None for f in DOCUMENT_SCHEMA}, "id": f"d{i}", "text": t, "source": "tinystories"})
    so.finish_task("p", {"data": [{"path": "part-00000.parquet", **w.close()}]})
    so.finalize(["p"], DOCUMENT_SCHEMA)

    entries = [(s, subject_file(s, "val", args.limit)) for s in args.subjects]
    entries += [(s, subject_file(s, "test", 0)) for s in args.test_subjects]
    print("lm-evaluation-harness ...", flush=True)
    lme, lme_secs = run_lmeval(py, hf, entries, args.shots, files)

    print("llmctl eval ...", flush=True)
    rows_out = []
    t0 = time.time()
    groups = {
        "val": [e for e in entries if e[0] in args.subjects],
        "test": [e for e in entries if e[0] not in args.subjects],
    }
    for group, ents in groups.items():
        if not ents:
            continue
        data = WORK / f"mc_{group}"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()
        for s, f in ents:
            (data / f.name).symlink_to(f)
        for mode in CHOICE_LINES:
            for shots in args.shots:
                res = {}
                for norm in ("chars", "bytes"):
                    cfg = EvalConfig(tasks=["mc"], batch_size=8, progress=False)
                    cfg.mc.data, cfg.mc.shots, cfg.mc.choices, cfg.mc.norm = str(data), shots, mode, norm
                    cfg.mc.fewshot_data = str(MMLU / "dev")
                    out = WORK / f"res_mc_{group}_{mode}{shots}_{norm}"
                    res[norm] = {
                        r["metric"]: r["value"] for r in run_eval(ck, out, cfg, overwrite=True)["stats"]["results"]
                    }
                    if norm == "chars":
                        samples = pq.read_table(out / "_samples" / "mc").to_pylist()
                    else:
                        bytes_picks = [r["pred_norm"] for r in pq.read_table(out / "_samples" / "mc").to_pylist()]
                lres = lme[str(shots)]["results"]
                names = [f"parity_mmlu_{mode}_{s}" for s, _ in ents]
                counts = [len(lme[str(shots)]["lls"][n]) for n in names]
                l_acc = sum(lres[n]["acc,none"] * c for n, c in zip(names, counts)) / sum(counts)
                l_norm = sum(lres[n]["acc_norm,none"] * c for n, c in zip(names, counts)) / sum(counts)
                # per-request log-likelihoods: llmctl's samples (files in name order, questions in file order)
                ours = [x for r in samples for x in r["loglikelihoods"]]
                theirs = [
                    x
                    for (s, f) in sorted(ents, key=lambda e: e[1].name)
                    for doc in lme[str(shots)]["lls"][f"parity_mmlu_{mode}_{s}"]
                    for x in doc
                ]
                assert len(ours) == len(theirs), (len(ours), len(theirs))
                diff = max(abs(a - b) for a, b in zip(ours, theirs))
                changed = sum(r["pred_norm"] != b for r, b in zip(samples, bytes_picks))
                label = f"mc {group} {mode} {shots}-shot"
                print(f"  {label}: {sum(counts)} questions, {len(ours)} requests", flush=True)
                rows_out.append((f"{label} acc", res["chars"]["acc"], l_acc))
                rows_out.append((f"{label} acc_norm", res["chars"]["acc_norm"], l_norm))
                rows_out.append((f"{label} max |loglik diff| per request", diff, None))
                rows_out.append(
                    (f"{label} acc_norm with norm=bytes ({changed} picks change)", res["bytes"]["acc_norm"], "info")
                )
    from llmctl.model.checkpoint import read_model_config

    lm_ctx = read_model_config(ck).max_seq_len
    cfg = EvalConfig(tasks=["perplexity"], batch_size=8, progress=False)
    cfg.perplexity.data = str(WORK / "docs")
    ours = {r["metric"]: r["value"] for r in run_eval(ck, WORK / "res_ppl", cfg, overwrite=True)["stats"]["results"]}
    ours_docs = [r["loglikelihood"] for r in pq.read_table(WORK / "res_ppl" / "_samples" / "perplexity").to_pylist()]
    cfg2 = EvalConfig(tasks=["perplexity"], batch_size=8, progress=False)
    cfg2.perplexity.data, cfg2.perplexity.prefix, cfg2.perplexity.stride = str(WORK / "docs"), "eos", lm_ctx // 2
    ours_sliding = {
        r["metric"]: r["value"]
        for r in run_eval(ck, WORK / "res_ppl_sliding", cfg2, overwrite=True)["stats"]["results"]
    }
    llmctl_secs = time.time() - t0
    lp = lme["ppl"]
    for m in ("bits_per_byte", "byte_perplexity", "word_perplexity"):
        rows_out.append((f"perplexity default {m} (lm-eval loglikelihood_rolling)", ours[m], lp[f"{m},none"]))
    theirs_docs = [_flat_float(x) for x in lme["ppl_lls"]]
    rows_out.append(
        (
            "perplexity default: max |loglik diff| per document",
            max(abs(a - b) for a, b in zip(ours_docs, theirs_docs)),
            None,
        )
    )
    loss_t, bpb_t = plain_transformers_ppl(hf, texts, lm_ctx // 2)
    rows_out.append(("perplexity loss (prefix eos, stride L/2; plain transformers)", ours_sliding["loss"], loss_t))
    rows_out.append(
        ("bits_per_byte (prefix eos, stride L/2; plain transformers)", ours_sliding["bits_per_byte"], bpb_t)
    )

    n_params = sum(p.numel() for p in __import__("llmctl.eval.lm", fromlist=["load_lm"]).load_lm(ck).model.parameters())
    print(
        f"\nmodel: {ck} ({n_params:,} params, context {lm_ctx}); MMLU val {args.subjects} (first {args.limit}), "
        f"test {args.test_subjects}; {len(texts)} documents"
    )
    print("| check | llmctl eval | reference | |diff| |")
    print("|---|---:|---:|---:|")
    ok = True
    for name, a, b in rows_out:
        if b is None:  # a max |diff| itself; per document the sums are of ~700 tokens
            tol = 1e-3 if "per document" in name else 1e-4
            ok &= a < tol
            print(f"| {name} | | | {a:.2e} |")
            continue
        if b == "info":
            print(f"| {name} | {a:.6f} | | |")
            continue
        d = abs(a - b)
        ok &= d == 0 if "acc" in name else d <= 1e-4 * max(1.0, abs(b))
        print(f"| {name} | {a:.6f} | {b:.6f} | {d:.2e} |")
    print(
        f"\nlm-eval wall time {lme_secs:.1f} s (model load + all shot settings + rolling ppl), "
        f"llmctl eval {llmctl_secs:.1f} s (the same work, twice for mc: norm=chars and norm=bytes, "
        f"plus the sliding-window perplexity)"
    )
    print("PARITY OK" if ok else "PARITY FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
