"""SFT speed on an imported Hugging Face model: `llmctl sft --from DIR` vs TRL 1.16's SFTTrainer.

    .venv/bin/python benchmarks/sft_trl.py                       # SmolLM2-135M's shape, seq 256, batch 4, 8 steps
    .venv/bin/python benchmarks/sft_trl.py --layers 2 --d-model 64 --heads 4 --kv-heads 2 --d-ff 128 \
        --vocab 2048 --seq 64 --batch 2 --steps 3 --warmup-steps 1     # a quick check

Writes a LlamaForCausalLM with the shape of a small open model (default SmolLM2-135M: hidden 576,
30 layers, 9 heads, 3 kv heads, intermediate 1536, vocab 49152, tied embeddings; random weights,
fp32) with transformers' LlamaConfig + save_pretrained, beside a byte-level BPE tokenizer built here
with a ChatML template, and a set of one-turn conversations of exactly --seq tokens (a prompt of about
half of them, the reply the rest). Then, each in its own process with --threads threads and one after
the other, for full fine-tuning and for LoRA (the same r, alpha, dropout 0 and target layers):

- llmctl: `python -m llmctl sft DATA --from DIR --no-pack --max-len SEQ --batch-size B --micro-batch B
  --dtype fp32 --device cpu ...` (the CLI as a user runs it; no held-out split, no evaluation);
- TRL: `SFTTrainer` on the same directory and rows as prompt/completion conversations,
  `completion_only_loss=True`, `per_device_train_batch_size=B`, fp32 (`bf16=False`), no packing,
  and `gradient_checkpointing=False` (TRL's SFTConfig turns it on by default; llmctl's default is off:
  both pinned off so that both compute one forward and one backward per step); LoRA through peft's
  `LoraConfig` with the same r, alpha and targets.

Both right-pad each batch to its longest row, and every row has the same length, so both compute the
same tokens. Steps/s counts the steps after the first --warmup-steps (llmctl: from metrics.jsonl's
elapsed_s; TRL: a callback at each step's end). Prints one JSON line per run, a table, and the two
ratios llmctl/TRL (full, LoRA); the issue's target is llmctl at least as fast as TRL in both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

# a script here named like a standard-library module would shadow it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TRL_CHILD = r"""
import json, sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

job = json.load(open(sys.argv[1]))
torch.set_num_threads(job["threads"])
rows = [json.loads(l) for l in open(job["data"])]
rows = [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows]
model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(job["model"])
peft_config = None
if job["lora_r"]:
    from peft import LoraConfig
    peft_config = LoraConfig(r=job["lora_r"], lora_alpha=job["lora_alpha"], lora_dropout=0.0,
                             target_modules=job["targets"], task_type="CAUSAL_LM")
args = SFTConfig(
    output_dir=job["out"], max_steps=job["steps"], per_device_train_batch_size=job["batch"],
    gradient_accumulation_steps=1, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0,
    weight_decay=0.0, max_grad_norm=1.0, completion_only_loss=True, packing=False,
    max_length=job["seq"] + 8, gradient_checkpointing=False, use_cpu=True, bf16=False, fp16=False,
    report_to=[], save_strategy="no", logging_steps=1, seed=0, dataloader_num_workers=0,
)
ends = []

class Clock(TrainerCallback):
    def on_step_end(self, *a, **k):
        ends.append(time.perf_counter())

trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                     peft_config=peft_config, callbacks=[Clock()])
trainer.train()
n_train = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
w = job["warmup"]
print(json.dumps({"steps_timed": len(ends) - w, "seconds": ends[-1] - ends[w - 1], "trainable": n_train,
                  "first_loss": trainer.state.log_history[0]["loss"]}))
"""


def build_dir(d: Path, a: argparse.Namespace) -> None:
    """The model directory: random LlamaForCausalLM weights of the chosen shape + a ChatML BPE tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    rng = random.Random(0)
    syll = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "da", "ve", "xu", "fi", "zo", "be", "gu", "ha"]
    words = sorted({"".join(rng.choice(syll) for _ in range(rng.randint(2, 3))) for _ in range(3000)})
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(a.vocab, 8192), special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    t.train_from_iterator([" ".join(rng.sample(words, 50)) for _ in range(4000)], trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML
    )
    cfg = LlamaConfig(
        vocab_size=a.vocab,
        hidden_size=a.d_model,
        intermediate_size=a.d_ff,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        max_position_embeddings=max(2048, a.seq + 16),
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).to(torch.float32).save_pretrained(d)
    tok.save_pretrained(d)
    rows, n_try = [], 0
    while len(rows) < a.rows:  # rows whose chat render (without the final "\n") is exactly --seq tokens
        n_try += 1
        if n_try > 50 * a.rows:
            sys.exit(f"could not build rows of exactly {a.seq} tokens (got {len(rows)})")
        half = max(1, a.seq // 2 - 6)
        conv = [
            {"role": "user", "content": " ".join(rng.choice(words) for _ in range(half // 2))},
            {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(half // 2))},
        ]
        ids = tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
        ids = list(ids)[:-1]  # the "\n" after the last <|im_end|>
        if len(ids) > a.seq:
            continue
        # top the reply up one word at a time to exactly --seq tokens
        while len(ids) < a.seq:
            conv[1]["content"] += " " + rng.choice(words)
            ids = list(tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"])[:-1]
        if len(ids) == a.seq:
            rows.append({"messages": conv})
    (d.parent / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_llmctl(d: Path, work: Path, a: argparse.Namespace, lora: bool) -> dict:
    run = work / ("llmctl-lora" if lora else "llmctl-full")
    cmd = [sys.executable, "-m", "llmctl", "sft", str(d.parent / "data.jsonl"), "--from", str(d), "-o", str(run)]
    cmd += ["--no-pack", "--max-len", str(a.seq), "--batch-size", str(a.batch), "--micro-batch", str(a.batch)]
    cmd += ["--steps", str(a.steps), "--lr", "1e-5", "--warmup", "0", "--eval-every", "0", "--ckpt-every", "100000"]
    cmd += ["--val-fraction", "0", "--dtype", "fp32", "--device", "cpu"]
    if lora:
        cmd += ["--lora-r", str(a.lora_r), "--lora-alpha", str(a.lora_alpha), "--lora-targets", a.targets]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(a))
    if r.returncode:
        sys.exit(f"llmctl sft failed:\n{r.stdout}\n{r.stderr}")
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    recs = [x for x in recs if "loss" in x]
    w = a.warmup_steps
    seconds = recs[-1]["elapsed_s"] - recs[w - 1]["elapsed_s"]
    line = next((ln for ln in r.stdout.splitlines() if "parameters train" in ln), "")
    trainable = int(line.split(" of ")[0].rsplit(";", 1)[-1].replace(",", "").strip()) if line else None
    return {"steps_timed": len(recs) - w, "seconds": seconds, "trainable": trainable, "first_loss": recs[0]["loss"]}


def run_trl(d: Path, work: Path, a: argparse.Namespace, lora: bool) -> dict:
    job = {
        "model": str(d),
        "data": str(d.parent / "data.jsonl"),
        "out": str(work / ("trl-lora" if lora else "trl-full")),
        "threads": a.threads,
        "steps": a.steps,
        "batch": a.batch,
        "seq": a.seq,
        "warmup": a.warmup_steps,
        "lora_r": a.lora_r if lora else 0,
        "lora_alpha": a.lora_alpha,
        "targets": a.targets.split(","),
    }
    f = work / ("trl-lora.json" if lora else "trl-full.json")
    f.write_text(json.dumps(job))
    r = subprocess.run([sys.executable, "-c", TRL_CHILD, str(f)], capture_output=True, text=True, env=_env(a))
    if r.returncode:
        sys.exit(f"TRL SFTTrainer failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _env(a: argparse.Namespace) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(a.threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--d-model", type=int, default=576)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--d-ff", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--seq", type=int, default=256, help="tokens per row (every row has exactly this many)")
    ap.add_argument("--batch", type=int, default=4, help="rows per optimizer step (one micro-batch)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the timing")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32.0)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="full,lora")
    a = ap.parse_args()
    if not 1 <= a.warmup_steps < a.steps:
        sys.exit("--warmup-steps must be at least 1 and below --steps")
    work = Path(tempfile.mkdtemp(prefix="sft_trl_"))
    d = work / "model"
    build_dir(d, a)
    res = {}
    for mode in a.modes.split(","):
        for tool, fn in (("llmctl", run_llmctl), ("trl", run_trl)):
            r = fn(d, work, a, mode == "lora")
            r["steps_per_s"] = r["steps_timed"] / r["seconds"]
            res[(tool, mode)] = r
            print(
                json.dumps(
                    {
                        "tool": tool,
                        "mode": mode,
                        **{k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()},
                    }
                ),
                flush=True,
            )
    print(
        f"\nshape: {a.layers} layers, d {a.d_model}, {a.heads}/{a.kv_heads} heads, ff {a.d_ff}, vocab {a.vocab}; "
        f"batch {a.batch} x {a.seq} tokens, fp32, {a.threads} threads; steps {a.warmup_steps + 1}..{a.steps} timed"
    )
    print(f"{'mode':6} {'llmctl steps/s':>15} {'TRL steps/s':>12} {'llmctl/TRL':>11} {'trainable (llmctl / TRL)':>28}")
    for mode in a.modes.split(","):
        lm, tr = res[("llmctl", mode)], res[("trl", mode)]
        print(
            f"{mode:6} {lm['steps_per_s']:>15.4f} {tr['steps_per_s']:>12.4f} {lm['steps_per_s'] / tr['steps_per_s']:>11.3f}"
            f" {lm['trainable'] or 'all':>13} / {tr['trainable']:,}"
        )


if __name__ == "__main__":
    main()
