"""`llmctl mix` and `pretrain --mix` on three real token datasets made with one tokenizer: the bundled
crawl through the filter (web), TinyStories (stories) and GSM8K problems with solutions (math),
the last two brought in by `data import --format docs` (examples/, see examples/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from run_helpers import kill_and_resume

from llmctl import config as C
from llmctl.data.chat_data import import_data
from llmctl.data.filter import FilterConfig, run_filter
from llmctl.data.mix import run_mix
from llmctl.data.mix_plan import MixConfig
from llmctl.data.tokenize import EncodeConfig, TokenizerTrainConfig, run_encode, run_train
from llmctl.errors import UsageError
from llmctl.store.dataset import Dataset

pytestmark = pytest.mark.slow  # end to end: `make test` runs it, `make test-fast` leaves it out

REPO = Path(__file__).resolve().parents[2]
LLMCTL = [sys.executable, "-m", "llmctl"]


@pytest.fixture(scope="module")
def srcs(tmp_path_factory):
    """{name: token dataset dir}, plus the tokenizer, an empty-train source and one of another tokenizer."""
    t = tmp_path_factory.mktemp("mixsrc")
    run_filter(
        [str(REPO / "examples" / "crawl")], t / "web", C.load(FilterConfig, flags={"workers": 1}), progress=False
    )
    import_data(REPO / "examples" / "text" / "tinystories.jsonl.gz", t / "stories", "docs")
    import_data(
        REPO / "examples" / "sft" / "gsm8k_train.jsonl",
        t / "math",
        "docs",
        doc_options={"text_field": "prompt,response"},
    )
    run_train(
        [str(t / n) for n in ("web", "stories", "math")],
        t / "tok",
        TokenizerTrainConfig(vocab_size=512, sample_bytes=1_000_000, workers=1),
    )
    out = {"tok": t / "tok"}
    for n in ("web", "stories", "math"):
        out[n] = t / f"tokens_{n}"
        run_encode(t / n, t / "tok", out[n], EncodeConfig(val_fraction=0.05, workers=1), progress=False)
    # a source with no train document (every document hashes into val), and one of another tokenizer
    (t / "three.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": f"story {i}"}) + "\n" for i in range(3)))
    import_data(t / "three.jsonl", t / "three", "docs")
    run_encode(t / "three", t / "tok", t / "empty", EncodeConfig(val_fraction=0.999999, workers=1), progress=False)
    run_train([str(t / "stories")], t / "tok2", TokenizerTrainConfig(vocab_size=400, sample_bytes=200_000, workers=1))
    run_encode(t / "stories", t / "tok2", t / "other_tok", EncodeConfig(workers=1), progress=False)
    out.update(empty=t / "empty", other_tok=t / "other_tok")
    return out


def cfg(srcs, **kw) -> MixConfig:
    table = kw.pop("sources", {"web": 0.2, "stories": 0.5, "math": 0.3})
    sources = {
        n: ({"path": str(srcs[n]), **w} if isinstance(w, dict) else {"path": str(srcs[n]), "weight": w})
        for n, w in table.items()
    }
    return MixConfig(
        sources=sources, **{"tokens": "400k", "max_epochs": 5.0, "shard_tokens": 60_000, "workers": 1, **kw}
    )


def train_rows(path) -> list[tuple[str, str, int]]:
    ds = Dataset.open(path)
    rows = []
    for b in ds.iter_batches(["id", "source", "split", "input_ids"]):
        lens = pc.list_value_length(b.column("input_ids")).to_pylist()
        rows += [
            (s, i, n)
            for s, i, sp, n in zip(
                b.column("source").to_pylist(), b.column("id").to_pylist(), b.column("split").to_pylist(), lens
            )
            if sp == "train"
        ]
    return rows


def test_realized_proportions_epochs_and_repeats(srcs, tmp_path):
    c = cfg(srcs, sources={"web": 0.2, "stories": 0.5, "math": {"epochs": 2}}, tokens="1.2M")
    m = run_mix(c, tmp_path / "mix", progress=False)
    rows = train_rows(tmp_path / "mix")
    tokens = Counter()
    for s, _, n in rows:
        tokens[s] += n
    total = sum(tokens.values())
    math_tokens = Dataset.open(srcs["math"]).manifest["stats"]["train"]["tokens"]
    assert tokens["math"] == 2 * math_tokens  # fixed epochs: exact, counted from the rows written
    weighted = 1_200_000 - 2 * math_tokens  # the weights share what the fixed source leaves of the budget
    for r in m["stats"]["mix"]["sources"]:
        assert r["tokens"] == tokens[r["name"]]
        if r["name"] != "math":
            target = {"web": 0.2, "stories": 0.5}[r["name"]] / 0.7 * weighted / 1_200_000
            assert abs(r["target_proportion"] - target) < 1e-4
            assert abs(tokens[r["name"]] / total - target) < 0.005, (r["name"], tokens[r["name"]] / total, target)
    web = m["stats"]["mix"]["sources"][0]
    assert web["epochs"] > 1.2 and web["passes"] == int(np.ceil(web["epochs"]))  # upsampled: whole documents
    counts = Counter(i for s, i, _ in rows if s == "web")
    assert set(counts.values()) == {web["passes"] - 1, web["passes"]} and len(counts) == web["available_documents"]
    seq = [(s, i) for s, i, _ in rows]
    assert all(a != b for a, b in zip(seq, seq[1:]))  # never the same document twice in a row
    # interleaved by progress: the first tenth of the stream already holds each source near its share
    head = Counter()
    for s, _, n in rows[: len(rows) // 10]:
        head[s] += n
    assert abs(head["stories"] / sum(head.values()) - tokens["stories"] / total) < 0.05
    # every source's val split once, beside the train split
    val = Dataset.open(tmp_path / "mix").manifest["stats"]["val"]["documents"]
    assert val == sum(Dataset.open(srcs[n]).manifest["stats"]["val"]["documents"] for n in ("web", "stories", "math"))


def test_temperature_and_downsampled_subset(srcs, tmp_path):
    sizes = {n: Dataset.open(srcs[n]).manifest["stats"]["train"]["tokens"] for n in ("web", "stories", "math")}
    c = cfg(srcs, sources={n: {} for n in sizes}, temperature=2.0, tokens="200k")
    m = run_mix(c, tmp_path / "t2", progress=False)
    p = {n: v**0.5 for n, v in sizes.items()}
    for r in m["stats"]["mix"]["sources"]:
        assert abs(r["target_proportion"] - p[r["name"]] / sum(p.values())) < 1e-4
        assert abs(r["proportion"] - r["target_proportion"]) < 0.005
    math = [i for s, i, _ in train_rows(tmp_path / "t2") if s == "math"]
    assert len(set(math)) == len(math)  # downsampled: a subset, no repeat
    again = run_mix(MixConfig(**{**c.__dict__, "seed": 1}), tmp_path / "t2seed1", progress=False)
    assert again["fingerprint"] != m["fingerprint"]
    assert {i for s, i, _ in train_rows(tmp_path / "t2seed1") if s == "math"} != set(math)


def test_deterministic_and_worker_count_invariant(srcs, tmp_path):
    a = run_mix(cfg(srcs), tmp_path / "w1", progress=False)
    b = run_mix(cfg(srcs, workers=2), tmp_path / "w2", progress=False)
    assert len(a["shards"]) >= 4
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert a["fingerprint"] == b["fingerprint"]


def test_killed_mix_resumes_to_the_same_bytes(srcs, tmp_path):
    c = cfg(srcs, shard_tokens=20_000)
    clean = run_mix(c, tmp_path / "clean", progress=False)
    out = tmp_path / "killed"
    cmd = LLMCTL + [
        "mix",
        "-o",
        str(out),
        "--tokens",
        "400k",
        "--max-epochs",
        "5",
        "--shard-tokens",
        "20000",
        "-w",
        "1",
    ]
    cmd += [f"--source={n}={srcs[n]}:{w}" for n, w in (("web", 0.2), ("stories", 0.5), ("math", 0.3))]
    resumed, r = kill_and_resume(cmd, out)
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in clean["shards"]]
    assert resumed["fingerprint"] == clean["fingerprint"]
    assert "mixture" in r.stdout and "realized" in r.stdout  # the table the CLI prints
    # the same command on the finished output: nothing to do; another table: refused
    r = subprocess.run(cmd[:-1] + [f"--source=math={srcs['math']}:0.4"], capture_output=True, text=True)
    assert r.returncode == 2 and "different run" in r.stderr


def test_weight_zero_drops_and_weights_are_normalized(srcs, tmp_path):
    out = tmp_path / "m"
    r = subprocess.run(
        LLMCTL
        + [
            "mix",
            "-o",
            str(out),
            "--tokens",
            "100k",
            "-w",
            "1",
            f"--source=web={srcs['web']}:2",
            f"--source=stories={srcs['stories']}:6",
            f"--source=math={srcs['math']}:0",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "'math' has weight 0: dropped" in r.stderr and "weights sum to 8, not 1: normalized" in r.stderr
    m = Dataset.open(out).manifest
    assert [s["name"] for s in m["stats"]["mix"]["sources"]] == ["web", "stories"]
    assert {s for s, _, _ in train_rows(out)} == {"web", "stories"}
    assert [round(s["target_proportion"], 6) for s in m["stats"]["mix"]["sources"]] == [0.25, 0.75]
    assert not any(str(srcs["math"]) in i["path"] for i in m["inputs"])


def test_a_share_whole_documents_cannot_meet_is_a_notice(srcs):
    from llmctl.data.mix_plan import make_plan, open_sources

    shortest = int(open_sources(cfg(srcs, sources={"web": 1.0}))[0].length["train"].min())
    notices: list[str] = []
    # web's target is 0.6 of its shortest page: one page overshoots it by two thirds
    c = cfg(srcs, sources={"web": 0.6 * shortest / 100_000, "stories": 1 - 0.6 * shortest / 100_000}, tokens="100k")
    plan = make_plan(c, open_sources(c, notices.append), notices.append)
    web = plan.table[0]
    assert web["documents"] >= 1 and abs(web["tokens"] - web["target_tokens"]) > 0.05 * web["target_tokens"]
    assert [n for n in notices if " gets " in n] == [
        f"source 'web' gets {web['tokens']:,} tokens for a target of {web['target_tokens']:,} ({web['proportion']:.1%} "
        f"of the mixture, not {web['target_proportion']:.1%}): its documents are whole and up to "
        f"{max(plan.sources[0].length['train']):,} tokens long; raise --tokens or split them"
    ]
    # a third of its shortest page: no page at all, a one-line error (it used to crash with an IndexError)
    c = cfg(srcs, sources={"web": shortest / 3 / 100_000, "stories": 1 - shortest / 3 / 100_000}, tokens="100k")
    with pytest.raises(
        UsageError,
        match=rf"source 'web': its target of [\d,]+ tokens is under half its shortest document \({shortest:,} tokens\)",
    ):
        make_plan(c, open_sources(c))
    notices.clear()
    c = cfg(srcs)  # 400k tokens: every source lands within a few tokens of its share, no notice
    make_plan(c, open_sources(c, notices.append), notices.append)
    assert not [n for n in notices if " gets " in n]


def test_bad_mixtures_are_one_line_errors_with_nothing_written(srcs, tmp_path):
    base = [f"--source=web={srcs['web']}:0.3", f"--source=stories={srcs['stories']}:0.7"]
    cases = [
        (base + [f"--source=math={srcs['math']}:-0.1"], "weight must be a number >= 0"),
        (base + ["--weight", "books=0.1"], "unknown source 'books'"),
        (base + [f"--source=other={srcs['other_tok']}:0.1"], "different tokenizers"),
        (base + [f"--source=empty={srcs['empty']}:0.1"], "holds no train tokens"),
        (base + ["--tokens", "10M"], "would need"),  # more than one epoch, and no --max-epochs
        (base + [f"--source=gone={tmp_path / 'nope'}:0.1"], "no such dataset directory"),
        (base + ["--tokens", "lots"], "--tokens"),
    ]
    for args, msg in cases:
        out = tmp_path / "never"
        r = subprocess.run(LLMCTL + ["mix", "-o", str(out), *args], capture_output=True, text=True)
        assert r.returncode == 2, (args, r.stderr)
        err = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("llmctl: error")]
        assert len(err) == 1 and msg in err[0] and "Traceback" not in r.stderr, (msg, r.stderr)
        assert not out.exists()


def test_streamed_mix_trains_on_the_materialized_order_and_resumes(srcs, tmp_path):
    from llmctl.train.mix_batches import StreamedMix
    from llmctl.train.pretrain import PretrainConfig, load_token_split, pretrain

    c = cfg(srcs, tokens="150k")
    mix_file = tmp_path / "mix.yaml"
    import yaml

    mix_file.write_text(yaml.safe_dump({k: v for k, v in C.to_dict(c).items() if k != "workers"}))
    run_mix(C.load(MixConfig, mix_file), tmp_path / "mixed", progress=False)
    streamed = StreamedMix(mix_file)
    for split in ("train", "val"):
        a, b = streamed.split(split), load_token_split(Dataset.open(tmp_path / "mixed"), split)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])

    def pcfg(**kw):
        return C.load(
            PretrainConfig,
            flags={
                "model.preset": "tiny",
                "model.d_model": 32,
                "model.n_layer": 1,
                "model.n_head": 2,
                "model.n_kv_head": 2,
                "seq_len": 32,
                "batch_tokens": 128,
                "train.micro_batch": 4,
                "train.steps": 4,
                "train.warmup_steps": 1,
                "train.eval_every": 4,
                "train.ckpt_every": 2,
                "train.device": "cpu",
                "val_tokens": 1024,
                **kw,
            },
        )

    pretrain(tmp_path / "mixed", srcs["tok"], tmp_path / "run_plain", pcfg())  # the materialized mix
    first = pretrain(None, srcs["tok"], tmp_path / "run_mix", pcfg(**{"train.stop_after": 2}), mix=mix_file)
    assert not first["finished"]
    ckpt = sorted((tmp_path / "run_mix" / "checkpoints").glob("step_*"))[-1]
    assert "position" in json.dumps(_train_state(ckpt)["data"])
    resumed = pretrain(None, srcs["tok"], tmp_path / "run_mix", pcfg(), mix=mix_file)
    assert resumed["finished"]
    losses = [
        [json.loads(ln) for ln in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("run_plain", "run_mix")
    ]
    pick = [{(d["step"], k): d[k] for d in ls for k in ("loss", "val_loss") if k in d} for ls in losses]
    assert pick[0] == pick[1] and len(pick[0]) >= 5
    with pytest.raises(UsageError, match="one of the two"):
        pretrain(tmp_path / "mixed", srcs["tok"], tmp_path / "bad", pcfg(), mix=mix_file)


def _train_state(ckpt: Path) -> dict:
    from llmctl.model.checkpoint import load_train_state

    return load_train_state(ckpt)


def test_report_shows_the_mixture(srcs, tmp_path):
    from llmctl.report.build import build_report

    root = tmp_path / "run"
    run_mix(cfg(srcs), root / "mix", progress=False)
    index = build_report(root)
    page = index.read_text()
    assert "Data mixture (mix)" in page and "realized" in page and (index.parent / "mix_mix.png").is_file()
    for name in ("web", "stories", "math"):
        assert f"<td>{name}</td>" in page


def test_shipped_mix_pipeline_runs_until_the_mix(tmp_path):
    """pipelines/mix.yaml as shipped, up to its mix stage (pretrain is the toy pipeline's business)."""
    import contextlib

    from llmctl.cli.runner import run_pipeline

    with contextlib.chdir(REPO):  # the pipeline's paths (examples/...) are relative to the repository
        records = run_pipeline(REPO / "pipelines" / "mix.yaml", tmp_path / "run", until="mix", echo=lambda m: None)
    assert [r["stage"] for r in records][-1] == "mix" and all(r["status"] == "ran" for r in records)
    table = {r["name"]: r for r in Dataset.open(tmp_path / "run" / "mix").manifest["stats"]["mix"]["sources"]}
    assert table["math"]["tokens"] == 2 * table["math"]["available_tokens"] and table["stories"]["epochs"] == 1.0
    assert (
        abs(table["web"]["tokens"] / (table["web"]["tokens"] + table["stories"]["tokens"]) - 0.3) < 0.005
    )  # the shipped weights web 0.3, stories 0.7
