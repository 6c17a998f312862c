"""eval scoring: closed-form perplexity, sliding windows, lm-eval's pair encoding, mc choice, batch invariance."""

from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parents[1]))
from eval_helpers import (  # noqa: E402
    VOCAB,
    resave_weights,
    tiny_checkpoint,
    tinystories_docs,
    tokenizer,
    write_documents,
    write_tokens,
)

from llmctl.errors import UsageError  # noqa: E402
from llmctl.eval.lm import load_lm  # noqa: E402
from llmctl.eval.runner import EvalConfig, run_eval  # noqa: E402
from llmctl.eval.tasks import (
    mc,  # noqa: E402
    perplexity,
)


def effective(logits: torch.Tensor) -> torch.Tensor:
    return logits.double() / math.sqrt(1 + 1e-5)


def unigram_checkpoint(path: Path, tmp: Path, logits: torch.Tensor) -> Path:
    """A model whose next-token logits are `logits` whatever the input: blocks write nothing, every
    embedding is the same vector of ones (so the final RMSNorm gives ones / sqrt(1 + eps)), and
    lm_head rows sum to logits: next-token logits = logits / sqrt(1 + 1e-5) (`effective`)."""
    tiny_checkpoint(path, tmp)
    w = load_file(str(path / "model.safetensors"))
    for k in w:
        if k.endswith(("o_proj.weight", "down_proj.weight")):
            w[k].zero_()
    w["embed_tokens.weight"].fill_(1.0)
    d = w["embed_tokens.weight"].shape[1]
    w["lm_head.weight"] = (logits[:, None] / d).expand(-1, d).contiguous()
    resave_weights(path, w)
    return path


@pytest.fixture(scope="module")
def docs_ds(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    docs = tinystories_docs(24)
    return write_documents(d / "docs", [docs[:12], docs[12:]])


def test_uniform_model_perplexity_is_vocab_size(tmp_path, docs_ds):
    ck = tiny_checkpoint(tmp_path / "ck", tmp_path, uniform=True)
    cfg = EvalConfig(tasks=["perplexity"], batch_size=4, progress=False)
    cfg.perplexity.data = str(docs_ds)
    rows = {r["metric"]: r for r in run_eval(ck, tmp_path / "res", cfg)["stats"]["results"]}
    texts = tinystories_docs(24)
    n_tok = sum(len(tokenizer().encode(t)) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert rows["loss"]["n"] == n_tok and rows["bits_per_byte"]["n"] == n_bytes
    assert rows["perplexity"]["value"] == pytest.approx(VOCAB, rel=1e-6)  # fp32 log-softmax
    assert rows["loss"]["value"] == pytest.approx(math.log(VOCAB), rel=1e-7)
    assert rows["bits_per_byte"]["value"] == pytest.approx(n_tok * math.log2(VOCAB) / n_bytes, rel=1e-7)


def test_unigram_model_loss_equals_closed_form_on_token_dataset(tmp_path):
    torch.manual_seed(1)
    logits = torch.randn(VOCAB) * 2
    ck = unigram_checkpoint(tmp_path / "ck", tmp_path, logits)
    tok = tokenizer()
    texts = tinystories_docs(10)
    docs = [tok.encode(t) + [tok.eos_id] for t in texts]
    ds = write_tokens(tmp_path / "tokens", docs, ["val", "train"] * 5)
    cfg = EvalConfig(tasks=["perplexity"], batch_size=2, progress=False)
    cfg.perplexity.data = str(ds)
    rows = {r["metric"]: r for r in run_eval(ck, tmp_path / "res", cfg)["stats"]["results"]}
    logp = torch.log_softmax(effective(logits), 0)
    val = [d for d, s in zip(docs, ["val", "train"] * 5) if s == "val"]
    nll = [-float(logp[t]) for d in val for t in d]
    assert rows["loss"]["n"] == len(nll)
    assert rows["loss"]["value"] == pytest.approx(sum(nll) / len(nll), rel=1e-6)
    n_bytes = sum(len(tok.decode(d).encode()) for d in val)
    assert rows["bits_per_byte"]["value"] == pytest.approx(sum(nll) / n_bytes / math.log(2), rel=1e-6)


@pytest.mark.parametrize("n,context,stride", [(1, 8, 4), (7, 8, 4), (8, 8, 8), (50, 8, 3), (50, 8, 8), (33, 16, 1)])
def test_windows_score_every_token_once_with_context(n, context, stride):
    ws = perplexity.windows(n, context, stride)
    scored = [j for _, s, e in ws for j in range(s, e)]
    assert scored == list(range(1, n + 1))
    for k, (a, s, e) in enumerate(ws):
        assert 0 <= a and e - 1 - a <= context  # input length within the context
        if k > 0 and e - 1 - context >= 0:
            assert s - a >= context - stride  # the first scored token sees >= context - stride tokens


def test_sliding_window_matches_direct_computation(tmp_path):
    """A document 3x the context: the windowed loss equals one computed by hand, window by window."""
    ck = tiny_checkpoint(tmp_path / "ck", tmp_path, max_seq_len=16)
    lm = load_lm(ck)
    tok = tokenizer()
    text = " ".join(tinystories_docs(3))
    ids = tok.encode(text)[:45]
    seq = [tok.eos_id] + ids
    expected = []
    with torch.no_grad():
        for a, s, e in perplexity.windows(len(ids), 16, 5):
            lp = F.log_softmax(lm.model(torch.tensor([seq[a : e - 1]])).double()[0], -1)
            expected += [float(lp[j - 1 - a, seq[j]]) for j in range(s, e)]
    assert len(expected) == len(ids)
    write_documents(tmp_path / "docs", [[tok.decode(ids)]])
    cfg = EvalConfig(tasks=["perplexity"], batch_size=3, progress=False)
    cfg.perplexity.data, cfg.perplexity.stride, cfg.perplexity.prefix = str(tmp_path / "docs"), 5, "eos"
    rows = {r["metric"]: r for r in run_eval(ck, tmp_path / "res", cfg)["stats"]["results"]}
    assert rows["loss"]["value"] == pytest.approx(-sum(expected) / len(expected), rel=1e-5)


def lm_eval_rolling_windows(tokens, prefix, max_len):
    """lm-eval 0.4's get_rolling_token_windows(context_len=1) + make_disjoint_window, written out."""
    out = []
    first = min(max_len, len(tokens))
    out.append(([prefix] + tokens[: first - 1], tokens[:first]))
    done = first
    while done < len(tokens):
        k = min(len(tokens) - done, max_len)
        end = done + k
        out.append((tokens[end - max_len - 1 : end - 1], tokens[end - k : end]))
        done += k
    return [(a[: len(a) - (len(b) - 1)], b) for a, b in out]  # make_disjoint_window


def test_default_perplexity_is_lm_eval_loglikelihood_rolling(tmp_path):
    """BOS prefix and disjoint windows: per document, the summed log-likelihood lm-eval's
    loglikelihood_rolling computes (each (context, continuation) scored as its loglikelihood does)."""
    import pyarrow.parquet as pq

    ck = tiny_checkpoint(tmp_path / "ck", tmp_path, max_seq_len=16)
    lm = load_lm(ck)
    tok = tokenizer()
    texts = [" ".join(tinystories_docs(3))[:300], tinystories_docs(5)[4][:40], "Hi."]
    want, words = [], []
    with torch.no_grad():
        for t in texts:
            total = 0.0
            for ctx, cont in lm_eval_rolling_windows(tok.encode(t), tok.bos_id, 16):
                inp = (ctx + cont)[-(16 + 1) :][:-1]  # lm-eval's _loglikelihood_tokens input
                lp = F.log_softmax(lm.model(torch.tensor([inp])).double()[0], -1)
                total += sum(float(lp[len(inp) - len(cont) + j, c]) for j, c in enumerate(cont))
            want.append(total)
            words.append(len(re.split(r"\s+", t)))
    write_documents(tmp_path / "docs", [texts])
    cfg = EvalConfig(tasks=["perplexity"], batch_size=2, progress=False)
    cfg.perplexity.data = str(tmp_path / "docs")
    rows = {r["metric"]: r for r in run_eval(ck, tmp_path / "res", cfg)["stats"]["results"]}
    n_bytes = sum(len(t.encode()) for t in texts)
    assert rows["bits_per_byte"]["value"] == pytest.approx(-sum(want) / n_bytes / math.log(2), rel=1e-6)
    assert rows["byte_perplexity"]["value"] == pytest.approx(math.exp(-sum(want) / n_bytes), rel=1e-6)
    assert rows["word_perplexity"]["value"] == pytest.approx(math.exp(-sum(want) / sum(words)), rel=1e-6)
    items = pq.read_table(tmp_path / "res" / "_samples" / "perplexity" / "part-00000.parquet").to_pylist()
    assert [r["text"] for r in items] == texts
    assert [r["loglikelihood"] for r in items] == pytest.approx(want, rel=1e-6)
    assert items[0]["windows"] > 1 and items[2]["windows"] == 1


def test_encode_pair_moves_trailing_space_like_lm_eval(tmp_path):
    lm = load_lm(tiny_checkpoint(tmp_path / "ck", tmp_path))
    tok = tokenizer()
    ctx, cont = mc.encode_pair(lm, "Answer: ", "B")
    whole = tok.encode("Answer: B")
    assert ctx == tok.encode("Answer:") and ctx + cont == whole
    ctx2, cont2 = mc.encode_pair(lm, "Once upon a", " time")
    assert ctx2 + cont2 == tok.encode("Once upon a time")


def _write_mc(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_mc_picks_highest_loglikelihood_choice(tmp_path):
    tok = tokenizer()
    data = _write_mc(
        tmp_path / "toy_test.csv",
        [
            ["What is 2+2?", "3", "4", "5", "6", "B"],
            ["Pick one.", "red", "blue", "green", "pink", "A"],
            ["Another?", "x", "y", "z", "w", "B"],
        ],
    )
    lm0 = load_lm(tiny_checkpoint(tmp_path / "ck0", tmp_path))
    ctx = mc.build_context(mc.read_items(data)[0], "toy", [], "letters")
    conts = {c: mc.encode_pair(lm0, ctx, " " + c)[1] for c in "ABCD"}
    favourite = [t for t in conts["B"] if all(t not in conts[c] for c in "ACD")]
    assert favourite, conts
    logits = torch.zeros(VOCAB)
    logits[favourite] = 5.0  # the model loves "B"
    ck = unigram_checkpoint(tmp_path / "ck", tmp_path, logits)
    cfg = EvalConfig(tasks=["mc"], batch_size=2, progress=False)
    cfg.mc.data = str(data)
    rows = {r["metric"]: r for r in run_eval(ck, tmp_path / "res", cfg)["stats"]["results"]}
    assert rows["acc"]["value"] == pytest.approx(2 / 3) and rows["acc"]["n"] == 3
    assert rows["acc_norm"]["value"] == pytest.approx(2 / 3)
    assert tok.vocab_size == VOCAB


@pytest.mark.parametrize("norm", ["chars", "bytes"])
def test_mc_text_choices_acc_and_acc_norm_follow_loglikelihoods(tmp_path, norm):
    """Full-text choices: acc = argmax of the summed log-likelihood, acc_norm = argmax per character
    (lm-eval; default) or per UTF-8 byte; non-ASCII choices (formal logic's symbols) tell them apart.
    The per-item output holds each request's log-likelihoods, the picks and the gold answer."""
    import pyarrow.parquet as pq

    torch.manual_seed(3)
    logits = torch.randn(VOCAB) * 3
    ck = unigram_checkpoint(tmp_path / "ck", tmp_path, logits)
    lm = load_lm(ck)
    logp = torch.log_softmax(effective(logits), 0)
    items = [
        ["Which animal?", "a cat", "the very big dog", "bird", "an old slow turtle", "A"],
        ["Which colour?", "deep red", "b", "light green sky", "the sun", "C"],
        ["Which?", "zz", "a b c d e f", "q", "mm", "D"],
        ["Which formula?", "∀x (Px ⊃ Qx)", "p", "¬p ∨ q", "(p • q) ≡ r", "C"],
        ["Translate.", "∼(A ≡ B)", "A ∨ B", "A ⊃ (B • C)", "B", "A"],
        ["Symbols?", "≡≡ ∨", "ab cd", "∀∀∀", "x y z w", "B"],
    ]
    data = _write_mc(tmp_path / "toy_test.csv", items)
    picks = {"chars": [], "bytes": []}
    lls_all = []
    for item in mc.read_items(data):
        ctx = mc.build_context(item, "toy", [], "text")
        lls = [sum(float(logp[t]) for t in mc.encode_pair(lm, ctx, " " + c)[1]) for c in item["choices"]]
        lls_all.append(lls)
        picks["chars"].append(max(range(4), key=lambda i: (lls[i] / len(item["choices"][i]), -i)))
        picks["bytes"].append(max(range(4), key=lambda i: (lls[i] / len(item["choices"][i].encode()), -i)))
    assert picks["chars"] != picks["bytes"]  # the data tells the two normalisations apart
    gold = [item["label"] for item in mc.read_items(data)]
    acc = sum(max(range(4), key=lambda i: ll[i]) == g for ll, g in zip(lls_all, gold))
    acc_norm = sum(p == g for p, g in zip(picks[norm], gold))
    cfg = EvalConfig(tasks=["mc"], batch_size=1, progress=False)
    cfg.mc.data, cfg.mc.choices = str(data), "text"
    if norm == "bytes":
        cfg.mc.norm = "bytes"
    rows = {r["metric"]: r["value"] for r in run_eval(ck, tmp_path / "res", cfg)["stats"]["results"]}
    want = {"acc": acc / 6, "acc_norm": acc_norm / 6, "chance": 0.25, "centered_acc": (acc / 6 - 0.25) / 0.75}
    assert rows == pytest.approx(want)  # chance: four choices; centered_acc: the core row over mc alone
    samples = pq.read_table(tmp_path / "res" / "_samples" / "mc" / "part-00000.parquet").to_pylist()
    assert [r["gold"] for r in samples] == gold and [r["pred_norm"] for r in samples] == picks[norm]
    assert [r["loglikelihoods"] for r in samples] == [pytest.approx(ll, abs=1e-4) for ll in lls_all]
    assert samples[3]["continuations"][0] == " ∀x (Px ⊃ Qx)" and samples[3]["context"].endswith("Answer:")


def test_results_do_not_change_with_batch_size(tmp_path, docs_ds):
    ck = tiny_checkpoint(tmp_path / "ck", tmp_path, seed=5, max_seq_len=128)
    results = []
    for bs in (1, 3):
        cfg = EvalConfig(tasks=["perplexity", "mc"], batch_size=bs, progress=False)
        cfg.perplexity.data, cfg.perplexity.stride = str(docs_ds), 48
        cfg.mc.data = str(Path(__file__).parents[1] / "fixtures" / "mmlu" / "val")
        cfg.mc.limit, cfg.mc.shots = 6, 1
        results.append(run_eval(ck, tmp_path / f"res{bs}", cfg)["stats"]["results"])
    assert results[0] == results[1]  # bit-identical floats, not approximately equal
    # batch size is a runtime option: the finished results of batch 1 are reused, not refused
    again = run_eval(ck, tmp_path / "res1", cfg)
    assert again["stats"]["results"] == results[0] and cfg.batch_size == 3
    cfg.mc.shots = 0
    with pytest.raises(UsageError, match="different run"):
        run_eval(ck, tmp_path / "res1", cfg)


def test_bad_inputs_are_usage_errors(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck", tmp_path)
    with pytest.raises(UsageError, match="unknown eval task"):
        run_eval(ck, tmp_path / "r1", EvalConfig(tasks=["nope"]))
    with pytest.raises(UsageError, match="task perplexity needs --ppl-data"):
        run_eval(ck, tmp_path / "r2", EvalConfig(tasks=["perplexity"], progress=False))
    with pytest.raises(UsageError, match="task mc needs --mc-data"):
        run_eval(ck, tmp_path / "r3", EvalConfig(tasks=["mc"]))
    cfg = EvalConfig(tasks=["mc"], progress=False)
    cfg.mc.data = str(tmp_path / "nothing.csv")
    with pytest.raises(UsageError, match="no such model"):
        run_eval(tmp_path / "missing", tmp_path / "r3", cfg)
    cfg = EvalConfig(tasks=["mc"], progress=False)
    cfg.mc.data = str(tmp_path / "nothing.csv")
    with pytest.raises(UsageError, match="no such multiple-choice"):
        run_eval(ck, tmp_path / "r4", cfg)


def test_mc_folder_with_dev_beside_val_scores_val_with_dev_shots(tmp_path):
    """examples/eval/mmlu's layout: SUBJECT_dev.csv next to SUBJECT_val.csv; dev gives shots, is not scored."""
    d = tmp_path / "mmlu"
    d.mkdir()
    _write_mc(d / "toy_dev.csv", [["Dev question?", "a", "b", "c", "d", "A"], ["Dev two?", "a", "b", "c", "d", "B"]])
    _write_mc(
        d / "toy_val.csv",
        [
            ["Val one?", "w", "x", "y", "z", "C"],
            ["Val two?", "w", "x", "y", "z", "D"],
            ["Val three?", "w", "x", "y", "z", "A"],
        ],
    )
    cfg = mc.MCConfig(data=str(d), shots=1)
    files = mc.data_files(cfg)
    assert [f.name for f in files] == ["toy_val.csv"]
    assert mc.fewshot_file(cfg, files[0]).name == "toy_dev.csv"
    ck = tiny_checkpoint(tmp_path / "ck", tmp_path)
    ecfg = EvalConfig(tasks=["mc"], batch_size=2, progress=False)
    ecfg.mc.data, ecfg.mc.shots = str(d), 1
    run_eval(ck, tmp_path / "res", ecfg)
    import pyarrow.parquet as pq

    items = pq.read_table(tmp_path / "res" / "_samples" / "mc").to_pylist()
    assert [r["question"] for r in items] == ["Val one?", "Val two?", "Val three?"]
    assert all("Dev question?\nA. a" in r["context"] and "Dev two?" not in r["context"] for r in items)


def test_packed_choices_equal_one_row_per_choice(tmp_path):
    """A question's multi-token choices scored in one row after their shared context give what one
    full row per choice gives (within float rounding: another attention kernel), the same greedy
    flags, and bit-identical numbers at any batch size."""
    import random

    ck = tiny_checkpoint(tmp_path / "ck", tmp_path, seed=2, n_layer=2, n_head=2, d_model=32, max_seq_len=256)
    lm = load_lm(ck)
    rng = random.Random(0)
    reqs = []
    for q in range(6):
        ctx = [rng.randrange(3, VOCAB) for _ in range(rng.randrange(5, 60))]
        greedy = lm.generate(ctx, 3)  # one choice is the model's own greedy continuation
        conts = [greedy] + [[rng.randrange(3, VOCAB) for _ in range(rng.randrange(1, 9))] for _ in range(3)]
        reqs += [(ctx, c) for c in conts]
    reqs.append(([5, 6, 7], [8]))  # a lone request: a row of its own
    packed = lm.loglikelihood(reqs, 8)
    assert packed == lm.loglikelihood(reqs, 1) == lm.loglikelihood(reqs, 3)
    lm.packs = False
    rows = lm.loglikelihood(reqs, 8)
    assert [g for _, g in packed] == [g for _, g in rows] and sum(g for _, g in rows) >= 6
    assert [v for v, _ in packed] == pytest.approx([v for v, _ in rows], abs=1e-5)


def test_shared_prefix_computed_once_equals_full_rows(tmp_path):
    """Few-shot prompts sharing their shots: the shared tokens run once (cached keys and values),
    each question's rest after them; the same log-likelihoods as full rows (within float
    rounding), the same greedy flags, bit-identical at any batch size."""
    import random

    from llmctl.eval.lm import MIN_PREFIX, prefix_clusters

    ck = tiny_checkpoint(tmp_path / "ck", tmp_path, seed=4, n_layer=2, n_head=2, d_model=32, max_seq_len=256)
    lm = load_lm(ck)
    rng = random.Random(1)
    reqs, shots = [], [[rng.randrange(3, VOCAB) for _ in range(MIN_PREFIX + 20)] for _ in range(2)]
    for s in shots:
        for q in range(5):
            ctx = s + [rng.randrange(3, VOCAB) for _ in range(rng.randrange(3, 40))]
            reqs += [(ctx, [c]) for c in (5, 6, 7, 8)] + [(ctx, lm.generate(ctx, 1))]
    reqs.append(([9] * 10, [3]))  # shares nothing: a row of its own
    inputs = {i: (c + x)[:-1] for i, (c, x) in enumerate(reqs) if i % 5 == 0}
    clusters = prefix_clusters(inputs, {i: 1 for i in inputs})
    assert [len(run) for _, run in clusters] == [5, 5] and all(p >= MIN_PREFIX + 20 for p, _ in clusters)
    got = lm.loglikelihood(reqs, 8)
    assert got == lm.loglikelihood(reqs, 1) == lm.loglikelihood(reqs, 3)
    lm.packs = False
    full = lm.loglikelihood(reqs, 8)
    assert [g for _, g in got] == [g for _, g in full] and sum(g for _, g in full) >= 10
    assert [v for v, _ in got] == pytest.approx([v for v, _ in full], abs=1e-5)


def test_generation_says_when_it_cuts_prompts_to_fit_the_context(tmp_path, capsys):
    """A prompt longer than the context minus max_new_tokens is cut (as lm-eval's hf does) and the
    cut is said on stderr; prompts that fit are not."""
    ck = tiny_checkpoint(tmp_path / "ck", tmp_path, max_seq_len=16)
    lm = load_lm(ck)
    lm.generate_many([[5, 6, 7]], 4)
    assert "prompts cut" not in capsys.readouterr().err
    lm.generate_many([list(range(5, 19)), [5, 6, 7]], 4)
    assert "1 of 2 prompts cut to their last 12 tokens" in capsys.readouterr().err
