"""Benchmark `llmctl tokenize` against a Hugging Face `tokenizers` byte-level BPE, in the same run.

    .venv/bin/python benchmarks/tokenizer.py [--vocab-size 32768] [--sample-mb 100] [--workers 1 2]

Data: all the text ../shared/data holds, as documents: the crawl (extracted and filtered by
`llmctl filter` when that works, else skipped), TinyStories, GSM8K (question + answer), the
AlpacaEval prompts and the HH-RLHF chosen/rejected dialogues. 5% of each source's documents
(by id hash) are held out; the rest is a 4-shard documents dataset, the training input.

Peer: tiktoken's GPT-2 vocabulary is downloaded at run time (no offline copy), so the peer is
HF `tokenizers` (installed with transformers) byte-level BPE, GPT-2 pre-tokenizer, trained on
exactly the documents llmctl sampled, with the same vocabulary size and the same 8 special tokens.

Printed, side by side: training time and peak RSS (each in a fresh process, so RSS includes the
interpreter and imports, ~100 MB), encode throughput in MB of UTF-8 text per second with 1 and
all workers (llmctl: the whole `tokenize encode` stage, Parquet in and out; and the tokenizer
alone in memory; the peer: `encode_batch` in memory, RAYON_NUM_THREADS = workers), and bytes
per token on the held-out documents, per source.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import queue
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
WORK = ROOT / "benchmarks" / ".work" / "tokenize"
SPECIALS = ["<unk>", "<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


# ---------------------------------------------------------------- data


def _jsonl(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def crawl_texts(workers: int) -> list[str]:
    """The crawl's text after `llmctl filter` (cached under benchmarks/.work), or [] if that fails."""
    out = ROOT / "benchmarks" / ".work" / "crawl_filtered"
    if not (out / "_manifest.json").is_file():
        cmd = [
            str(ROOT / ".venv" / "bin" / "llmctl"),
            "filter",
            str(DATA / "crawl"),
            "-o",
            str(out),
            "-w",
            str(workers),
        ]
        if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
            print("note: `llmctl filter` failed on the crawl; the crawl text is left out")
            return []
    from llmctl.store.dataset import Dataset

    return [r["text"] for r in Dataset.open(out).iter_rows(["text"])]


def load_sources(workers: int) -> dict[str, list[str]]:
    ts = (DATA / "tinystories" / "tinystories_valid_head.txt").read_text(encoding="utf-8")
    gsm = [
        f"{r['question']}\n{r['answer']}"
        for f in ("gsm8k_train.jsonl", "gsm8k_test.jsonl")
        for r in _jsonl(DATA / "sft" / f)
    ]
    alpaca = [
        f"{r['instruction']}\n{r.get('output') or ''}" for r in _jsonl(DATA / "sft" / "alpaca_eval_prompts.jsonl")
    ]
    hh = [
        r[k]
        for r in _jsonl(DATA / "prefs" / "hh_rlhf_harmless_base_test.jsonl")
        for k in ("chosen", "rejected")
        if isinstance(r.get(k), str)
    ]
    sources = {
        "crawl": crawl_texts(workers),
        "tinystories": [d for d in ts.split("\n\n") if d.strip()],
        "gsm8k": gsm,
        "alpaca": alpaca,
        "hh-rlhf": hh,
    }
    return {k: [t for t in v if t] for k, v in sources.items() if v}


def write_datasets(sources: dict[str, list[str]], shards: int = 4):
    """Train documents (a `shards`-shard dataset) and held-out documents (5% by id hash)."""
    import pyarrow as pa

    from llmctl.data.tokenize import split_of
    from llmctl.store.dataset import StageOutput

    train, held = [], {}
    for name, texts in sources.items():
        for i, t in enumerate(texts):
            doc_id = f"{name}-{i}"
            (held.setdefault(name, []) if split_of(doc_id, 0.05, seed=99) == "val" else train).append((doc_id, t))
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])

    class Cfg:
        __dataclass_fields__: dict = {}

    out = WORK / "docs"
    shutil.rmtree(out, ignore_errors=True)
    so = StageOutput(out, "import", Cfg(), inputs=[])
    names = []
    for k in range(shards):
        w = so.shard_writer(f"part-{k:05d}.parquet", schema)
        for doc_id, t in train[k::shards]:
            w.write({"id": doc_id, "text": t, "source": doc_id.rsplit("-", 1)[0]})
        so.finish_task(f"part-{k:05d}", {"data": [{"path": f"part-{k:05d}.parquet", **w.close()}]})
        names.append(f"part-{k:05d}")
    so.finalize(names, schema)
    return out, {k: [t for _, t in v] for k, v in held.items()}


# ---------------------------------------------------------------- one measurement per fresh process


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_llmctl(docs: str, out: str, vocab: int, sample: int, workers: int, split_digits: bool, q) -> None:
    from llmctl.data.tokenize import TokenizerTrainConfig, run_train

    cfg = TokenizerTrainConfig(vocab_size=vocab, sample_bytes=sample, workers=workers, split_digits=split_digits)
    m = run_train([docs], out, cfg, overwrite=True)
    q.put({"train_s": m["timings"]["train_seconds"], "rss_mb": _rss_mb(), "sample": m["stats"]["sample"]})


def _train_hf(texts_file: str, out: str, vocab: int, workers: int, split_digits: bool, q) -> None:
    os.environ["RAYON_NUM_THREADS"] = str(workers)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = json.loads(Path(texts_file).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:  # the same one-digit-per-token rule as llmctl's default, before byte-level BPE
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    secs = time.perf_counter() - t0
    tok.save(out)
    q.put({"train_s": round(secs, 3), "rss_mb": _rss_mb(), "vocab": tok.get_vocab_size()})


def _encode_mem(kind: str, path: str, texts_file: str, threads: int, q) -> None:
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    texts = json.loads(Path(texts_file).read_text(encoding="utf-8"))
    nbytes = sum(len(t.encode()) for t in texts)
    if kind == "llmctl":
        from llmctl.tokenizer.spm import Tokenizer

        tok = Tokenizer.load(path)
        run = lambda: tok.encode_batch(texts, num_threads=threads)  # noqa: E731
    else:
        from tokenizers import Tokenizer as HF

        tok = HF.from_file(path)
        run = lambda: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]  # noqa: E731
    run()  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        ids = run()
        best = min(best, time.perf_counter() - t0)
    q.put({"mb_s": nbytes / 1e6 / best, "tokens": sum(map(len, ids))})


def _encode_stage(docs: str, tok: str, out: str, workers: int, q) -> None:
    from llmctl.data.tokenize import EncodeConfig, run_encode

    shutil.rmtree(out, ignore_errors=True)
    m = run_encode(docs, tok, out, EncodeConfig(workers=workers), progress=False)
    q.put({"mb_s": m["stats"]["bytes"] / 1e6 / m["timings"]["run_seconds"], "tokens": m["stats"]["tokens"]})


def fresh(fn, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    while True:
        try:
            res = q.get(timeout=1)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"{fn.__name__} died (exit code {p.exitcode})") from None
    p.join()
    return res


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--sample-mb", type=float, default=100)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    sources = load_sources(max(args.workers))
    docs, held = write_datasets(sources)
    total = {k: sum(len(t.encode()) for t in v) for k, v in sources.items()}
    print(
        f"data: {sum(total.values()) / 1e6:.1f} MB of text in {sum(map(len, sources.values())):,} documents "
        f"({', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in total.items())}); 5% held out"
    )

    tok_dir = WORK / "llmctl_tok"
    lt = fresh(
        _train_llmctl, str(docs), str(tok_dir), args.vocab_size, int(args.sample_mb * 1e6), max(args.workers), True
    )
    joined_dir = WORK / "llmctl_tok_no_split_digits"  # for bytes/token only: the effect of split digits
    fresh(
        _train_llmctl, str(docs), str(joined_dir), args.vocab_size, int(args.sample_mb * 1e6), max(args.workers), False
    )
    # the peer trains on exactly the documents llmctl sampled
    from llmctl.data.tokenize import sample_documents
    from llmctl.store.dataset import Dataset

    sample, _ = sample_documents([Dataset.open(docs)], int(args.sample_mb * 1e6), seed=0)
    (WORK / "sample.json").write_text(json.dumps(sample), encoding="utf-8")
    hf_path = WORK / "hf_bytelevel_bpe.json"
    ht = fresh(_train_hf, str(WORK / "sample.json"), str(hf_path), args.vocab_size, max(args.workers), False)
    hf_digits_path = WORK / "hf_bytelevel_bpe_split_digits.json"  # like for like with llmctl's split digits
    fresh(_train_hf, str(WORK / "sample.json"), str(hf_digits_path), args.vocab_size, max(args.workers), True)
    print(
        f"\ntraining on {lt['sample']['bytes'] / 1e6:.1f} MB ({lt['sample']['documents']:,} documents), "
        f"vocab {args.vocab_size:,}, {max(args.workers)} threads"
    )
    print(f"  {'':34s}{'seconds':>10s}{'peak RSS MB':>14s}")
    print(f"  {'llmctl (sentencepiece BPE)':34s}{lt['train_s']:>10.2f}{lt['rss_mb']:>14.0f}")
    print(f"  {'HF tokenizers byte-level BPE':34s}{ht['train_s']:>10.2f}{ht['rss_mb']:>14.0f}")

    all_texts = [t for v in sources.values() for t in v]
    (WORK / "all.json").write_text(json.dumps(all_texts), encoding="utf-8")
    mb = sum(total.values()) / 1e6
    print(f"\nencode throughput, MB of text per second ({mb:.1f} MB, {len(all_texts):,} documents)")
    print(f"  {'workers':34s}" + "".join(f"{w:>10d}" for w in args.workers))
    rows = {
        "llmctl tokenize encode (stage)": [
            fresh(_encode_stage, str(docs), str(tok_dir), str(WORK / f"tokens{w}"), w) for w in args.workers
        ],
        "llmctl Tokenizer (in memory)": [
            fresh(_encode_mem, "llmctl", str(tok_dir), str(WORK / "all.json"), w) for w in args.workers
        ],
        "HF byte-level BPE (in memory)": [
            fresh(_encode_mem, "hf", str(hf_path), str(WORK / "all.json"), w) for w in args.workers
        ],
    }
    for name, res in rows.items():
        print(f"  {name:34s}" + "".join(f"{r['mb_s']:>10.2f}" for r in res))
    stage_mb = rows["llmctl tokenize encode (stage)"][-1]["mb_s"]
    peer_mb = rows["HF byte-level BPE (in memory)"][-1]["mb_s"]
    print(f"  ratio llmctl stage / peer at {args.workers[-1]} workers: {stage_mb / peer_mb:.2f}x")

    from tokenizers import Tokenizer as HF

    from llmctl.tokenizer.spm import Tokenizer

    ours, joined = Tokenizer.load(tok_dir), Tokenizer.load(joined_dir)
    peer, peer_digits = HF.from_file(str(hf_path)), HF.from_file(str(hf_digits_path))
    print("\nbytes per token on held-out documents (higher is better); digits split one per token in the first")
    print("two columns, kept in runs (GPT-2 pre-tokenizer) in the last two")
    print(f"  {'source':14s}{'MB':>8s}{'llmctl':>10s}{'HF BPE':>10s}{'llmctl':>10s}{'HF BPE':>10s}")
    tb = tl = tpd = tj = tp = 0
    for name, texts in held.items():
        b = sum(len(t.encode()) for t in texts)
        nl = sum(map(len, ours.encode_batch(texts)))
        nj = sum(map(len, joined.encode_batch(texts)))
        np_ = sum(len(e.ids) for e in peer.encode_batch(texts, add_special_tokens=False))
        npd = sum(len(e.ids) for e in peer_digits.encode_batch(texts, add_special_tokens=False))
        tb, tl, tpd, tj, tp = tb + b, tl + nl, tpd + npd, tj + nj, tp + np_
        print(f"  {name:14s}{b / 1e6:>8.2f}{b / nl:>10.3f}{b / npd:>10.3f}{b / nj:>10.3f}{b / np_:>10.3f}")
    print(f"  {'all':14s}{tb / 1e6:>8.2f}{tb / tl:>10.3f}{tb / tpd:>10.3f}{tb / tj:>10.3f}{tb / tp:>10.3f}")


if __name__ == "__main__":
    main()
