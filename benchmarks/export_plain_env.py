"""The export loads in a plain transformers environment: a fresh venv with torch, transformers, tokenizers only.

    .venv/bin/python benchmarks/export_plain_env.py [--vocab 4096] [--docs 4000]

1. Here (the project's venv): trains a BPE tokenizer on TinyStories (benchmarks/.work), builds a
   small llmctl checkpoint with it (random weights moved off their init) and exports it with
   `llmctl.export.hf.export_hf`.
2. Creates benchmarks/.venvs/plain with `pip install torch transformers tokenizers` only (no test
   extra: no protobuf, no sentencepiece, no tiktoken; the script checks they cannot be imported).
3. In that venv: `AutoTokenizer.from_pretrained(EXPORT)` and `AutoModelForCausalLM.from_pretrained`
   encode tricky text (literal "▁", special-token strings typed in text, control characters,
   emoji, digits, runs of spaces, random strings of such characters, held-out TinyStories),
   decode it, apply the chat template, and compute logits.
4. Compares with llmctl's tokenizer and model: ids, decoded text and chat ids must be identical,
   logits within 1e-4.
5. `--big-vocabs 8192 16384`: also trains those vocabularies on GSM8K + HH-RLHF + TinyStories
   (../shared/data) and compares `tokenizer.json` (read by `tokenizers` here) with llmctl on held-out
   text of the three.
Prints `PLAIN ENV OK` and exits 0 only when everything matches.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "benchmarks" / ".venvs" / "plain"
WORK = ROOT / "benchmarks" / ".work" / "export_plain_env"
SHARED_DATA = Path(
    os.environ.get("LLMCTL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)  # ../shared/data beside the checkout
STORIES = SHARED_DATA / "tinystories/tinystories_valid_head.txt"
TRICKY = [
    "Hello  world\n\n  x",
    "a ▁ b ▁▁c▁",
    "say <|user|> now<|end|><|assistant|>",
    "<|eos|>",
    "<0x41> <unk>",
    "café 日本語 🤖 \x00\x01\x1f\x7f",
    "12345 3.14 -7",
    "   ",
    "\t\ttab\r\n",
    "x\u2581",
    "\ufffd",
    " leading",
    "trailing ",
    "\u00a0nbsp",
    "Ünïcödé ß ﬁ",
]

CHILD = r"""
import importlib, json, sys
for m in ("google.protobuf", "sentencepiece", "tiktoken"):
    try:
        importlib.import_module(m)
        sys.exit(f"{m} is importable: not a plain environment")
    except ImportError:
        pass
import torch, transformers, tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer
a = json.loads(open(sys.argv[1]).read())
tok = AutoTokenizer.from_pretrained(a["export"])
model = AutoModelForCausalLM.from_pretrained(a["export"], dtype=torch.float32).eval()
ids = [tok.encode(t, add_special_tokens=False) for t in a["texts"]]
chat = tok.apply_chat_template(a["messages"], add_generation_prompt=True, tokenizer_kwargs={"split_special_tokens": False})
chat = list(chat["input_ids"] if hasattr(chat, "keys") else chat)
with torch.no_grad():
    logits = model(torch.tensor([ids[a["logits_doc"]][:96]])).logits[0].tolist()
print(json.dumps({"ids": ids, "decoded": [tok.decode(i) for i in ids], "chat": chat, "logits": logits,
                  "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                               "torch": torch.__version__}, "class": type(tok).__name__}))
"""


def stories(n: int, skip: int = 0) -> list[str]:
    docs = [d.strip() for d in STORIES.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    return docs[skip : skip + n]


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run(
            [
                py,
                "-m",
                "pip",
                "install",
                "-q",
                f"torch=={torch.__version__.split('+')[0]}",
                "transformers",
                "tokenizers",
            ],
            check=True,
        )
    return py


def big_vocab_check(vocab: int) -> bool:
    """tokenizer.json of a `vocab`-token BPE trained on GSM8K + HH + TinyStories vs llmctl on held-out text."""
    from tokenizers import Tokenizer as HFTokenizer

    from llmctl.export.hf_tokenizer import tokenizer_json
    from llmctl.tokenizer.spm import Tokenizer, training_chunks

    shared = SHARED_DATA
    gsm = [json.loads(x) for x in (shared / "sft" / "gsm8k_train.jsonl").read_text().splitlines()[:4000]]
    gsm = [g["question"] + "\n" + g["answer"] for g in gsm]
    hh = [
        json.loads(x)["chosen"]
        for x in (shared / "prefs" / "hh_rlhf_harmless_base_test.jsonl").read_text().splitlines()
    ]
    st = stories(6000)
    train, test = gsm[:3000] + hh[:1800] + st[:5000], gsm[3000:] + hh[1800:] + st[5000:]
    tok = Tokenizer.train((c for d in train for c in training_chunks(d)), vocab)
    path = WORK / f"tokenizer_{vocab}.json"
    path.write_text(json.dumps(tokenizer_json(tok), ensure_ascii=False))
    hf = HFTokenizer.from_file(str(path))
    hf.encode_special_tokens = True
    bad = n_tok = 0
    for t in test:
        ids = tok.encode(t)
        n_tok += len(ids)
        bad += ids != hf.encode(t, add_special_tokens=False).ids or hf.decode(ids, skip_special_tokens=False) != t
    print(
        f"| {vocab}-token BPE (GSM8K + HH + TinyStories): ids and decode equal on held-out text | "
        f"{len(test) - bad} of {len(test)} texts ({n_tok:,} tokens) |"
    )
    return bad == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--docs", type=int, default=4000, help="TinyStories documents the tokenizer is trained on")
    ap.add_argument("--big-vocabs", type=int, nargs="*", default=[8192, 16384])
    args = ap.parse_args()

    from llmctl.export.hf import export_hf
    from llmctl.model.checkpoint import save_checkpoint
    from llmctl.model.transformer import ModelConfig, Transformer
    from llmctl.tokenizer.spm import Tokenizer, training_chunks

    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train = stories(args.docs)
    tok = Tokenizer.train((c for d in train for c in training_chunks(d)), args.vocab)
    tok.save(WORK / "tok")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=64, max_seq_len=128)
    model = Transformer(cfg)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    save_checkpoint(WORK / "ck", model.eval(), cfg, tokenizer_dir=WORK / "tok")
    export = export_hf(WORK / "ck", WORK / "hf", overwrite=True)
    rng = random.Random(0)
    alphabet = "ab  ▁\n\t<|>/0129éß日🤖\x00\x01."
    texts = (
        TRICKY
        + stories(300, skip=args.docs)
        + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(1000)]
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 2 ▁?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3?"},
    ]
    logits_doc = len(TRICKY)
    print(f"tokenizer ({tok.vocab_size} tokens), checkpoint and export in {time.time() - t0:.1f} s", flush=True)

    t1 = time.time()
    py = ensure_venv()
    installed = subprocess.run(
        [py, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    ).stdout
    names = sorted(p["name"].lower() for p in json.loads(installed))
    (WORK / "args.json").write_text(
        json.dumps({"export": str(export), "texts": texts, "messages": messages, "logits_doc": logits_doc})
    )
    r = subprocess.run(
        [py, "-c", CHILD, str(WORK / "args.json")],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(WORK)},
    )
    if r.returncode:
        print(r.stderr[-3000:])
        print("PLAIN ENV FAILED")
        sys.exit(1)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"plain venv ready and run in {time.time() - t1:.1f} s; packages: {', '.join(names)}")

    want_ids = [tok.encode(t) for t in texts]
    bad_ids = [t for t, a, b in zip(texts, want_ids, got["ids"]) if a != b]
    bad_dec = [t for t, d in zip(texts, got["decoded"]) if d != t]
    chat_ok = got["chat"] == tok.apply_chat_template(messages, add_generation_prompt=True)
    with torch.no_grad():
        ours = model(torch.tensor([want_ids[logits_doc][:96]]))[0]
    logit_diff = (ours - torch.tensor(got["logits"])).abs().max().item()
    print(
        f"\ntransformers {got['versions']['transformers']}, tokenizers {got['versions']['tokenizers']}, "
        f"torch {got['versions']['torch']}; AutoTokenizer -> {got['class']}"
    )
    print("| check | result |\n|---|---|")
    print(
        f"| protobuf, sentencepiece, tiktoken installed | {', '.join(n for n in ('protobuf', 'sentencepiece', 'tiktoken') if n in names) or 'none'} |"
    )
    print(
        f"| token ids equal llmctl's ({len(texts)} texts, {sum(map(len, want_ids)):,} tokens) | "
        f"{len(texts) - len(bad_ids)} of {len(texts)} |"
    )
    print(f"| decode(encode(text)) == text | {len(texts) - len(bad_dec)} of {len(texts)} |")
    print(f"| '<|user|>' typed in text stays text | {tok.special_ids['<|user|>'] not in got['ids'][2]} |")
    print(f"| literal '▁' round-trips | {got['decoded'][1] == TRICKY[1]} |")
    print(f"| chat template ids equal llmctl's chat format | {chat_ok} |")
    print(f"| max |logit diff| (96 tokens) | {logit_diff:.2e} |")
    for t in bad_ids[:3] + bad_dec[:3]:
        print("  mismatch:", repr(t[:80]))
    ok = (
        not bad_ids and not bad_dec and chat_ok and logit_diff < 1e-4 and not {"protobuf", "sentencepiece"} & set(names)
    )
    for v in args.big_vocabs:
        ok &= big_vocab_check(v)
    print("PLAIN ENV OK" if ok else "PLAIN ENV FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
