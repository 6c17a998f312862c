"""Tool use in rl rollouts: the calculator parses arithmetic and never executes model text, a user tool
that hangs, raises, floods its output or is called too often is cut off with a counted reason, tool
output is excluded from the loss, and a run with tools resumes exactly."""

import ast
import builtins
import json
import textwrap
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import rl_helpers as H
import torch
from tool_helpers import qwen_dir, trl_template

from llmctl.errors import UsageError
from llmctl.model.generate import Generated
from llmctl.tokenizer.hf import HFTokenizer
from llmctl.tokenizer.spm import Tokenizer
from llmctl.train import distributed as D
from llmctl.train.rl.tools import TOOLS, ToolBox, ToolError, calculator, completion_text, generate_with_tools


@pytest.mark.parametrize(
    "expr,want",
    [("12*34", "408"), ("2**10", "1024"), ("7/2", "3.5"), ("1,234 + 1", "1235"), ("-(3-5)*4", "8"), ("10//3", "3")],
)
def test_calculator_computes_arithmetic(expr, want):
    assert calculator(expr) == want


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os')",
        "__import__('os').system('touch PWNED')",
        "().__class__",
        "().__class__.__bases__[0].__subclasses__()",
        "open('/etc/passwd')",
        "x",
        "[1, 2]",
        "lambda: 1",
        "1 if 1 else 2",
        "9**9**9",
        "1/0",
        "",
        "1" * 300,
    ],
)
def test_calculator_refuses_anything_but_arithmetic_without_eval(expr, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    seen = []

    def forbidden(*a, **k):
        seen.append(a)
        raise AssertionError("model text reached eval/exec/compile")

    real_compile = builtins.compile

    def parse_only(src, filename, mode, flags=0, *a, **k):  # ast.parse compiles to a tree, never to code
        if not flags & ast.PyCF_ONLY_AST:
            forbidden(src)
        return real_compile(src, filename, mode, flags, *a, **k)

    box = ToolBox(["calculator"])
    with monkeypatch.context() as m:
        m.setattr(builtins, "eval", forbidden)
        m.setattr(builtins, "exec", forbidden)
        m.setattr(builtins, "compile", parse_only)
        with pytest.raises(ToolError):
            calculator(expr)
        reply = box.call(expr)
    assert reply.startswith("error: ") and box.stats()["tools/cutoff/error"] == 1
    assert not seen and not (tmp_path / "PWNED").exists()


@pytest.fixture
def user_tools(tmp_path, monkeypatch):
    (tmp_path / "my_tools.py").write_text(
        textwrap.dedent(
            """
            import time

            def shout(arg):
                return arg.upper()

            def hang(arg):
                time.sleep(60)

            def boom(arg):
                raise ValueError("no good " + arg)

            def flood(arg):
                print("x" * 10_000_000)
                return "done"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.slow
def test_a_user_tool_runs_in_a_subprocess_and_is_cut_off_with_a_reason(user_tools):
    box = ToolBox(["my_tools:shout", "my_tools:hang", "my_tools:boom", "my_tools:flood"], timeout=2.0, max_output=1000)
    assert box.call("my_tools:shout abc") == "ABC"
    assert box.call("my_tools:hang 1") == "error: timeout"
    assert box.call("my_tools:boom x") == "error: ValueError: no good x"
    assert box.call("my_tools:flood 1") == "error: output_limit"
    st = box.stats()
    assert st["tools/calls"] == 4
    assert (st["tools/cutoff/timeout"], st["tools/cutoff/error"], st["tools/cutoff/output_limit"]) == (1, 1, 1)
    assert box.stats()["tools/calls"] == 0  # reset after each read


def test_unknown_tool_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown tool 'abacus'; choose calculator or MODULE:FUNC"):
        ToolBox(["abacus"])
    assert list(TOOLS) == ["calculator"]


def scripted(tok, text, stop=True):
    """A generate(prompts, max_new, force_fn) with generate_batch's force_fn contract whose every row
    "samples" the tokens of `text` (then a stop id, with stop=True; else it repeats text)."""

    def gen(prompts, max_new, force_fn=None, **_):
        toks, ended, stops, forced = [], [], [], []
        for i in range(len(prompts)):
            model = tok.encode(text) if isinstance(text, str) else list(text)
            out, fed, queue, k, end = [], [], [], 0, False
            while len(out) < max_new:
                if queue:
                    out.append(queue.pop(0))
                    fed.append(True)
                    continue
                if k == len(model):
                    if stop:
                        end = True
                        break
                    k = 0
                out.append(model[k])
                fed.append(False)
                k += 1
                feed = force_fn(i, out)
                if isinstance(feed, Future):
                    feed = feed.result()
                if feed is False:
                    break
                queue = list(feed or [])
            toks.append(out)
            ended.append(end)
            stops.append(tok.stop_ids[0] if end else None)
            forced.append(fed)
        return Generated(toks, ended, stops, sum(map(len, toks)), 0.0, forced)

    return gen


@pytest.fixture
def tok(tmp_path):
    from llmctl.train.sft import load_start

    ck, _ = H.setup(tmp_path)
    return load_start(ck)[2]


@pytest.fixture(scope="module")
def text_tok():
    """A tokenizer trained without the tool tokens (as before they existed): calls are text."""
    return Tokenizer.train(
        [json.dumps(r) for r in H.addition_rows()] + ["so <<12*34= answer #### 408"] * 5, 400, tool_tokens=False
    )


def marked(tok, *parts):
    """Ids of text parts and tool-marker names (`<|tool_call|>` ...) in order."""
    return [i for p in parts for i in ([tok.special_ids[p]] if p in tok.special_ids else tok.encode(p))]


def test_tool_output_is_fed_and_marked_as_not_the_models(tok):
    box = ToolBox(["calculator"])
    script = marked(tok, "so ", "<|tool_call|>", "calculator 12*34", "<|/tool_call|>", " answer #### 408")
    out, mine = generate_with_tools(scripted(tok, script), [[5, 6]], 64, tok, box)
    comp = out.tokens[0]
    fed = marked(tok, "<|tool_output|>", "408", "<|/tool_output|>")
    want = script[: script.index(tok.special_ids["<|/tool_call|>"]) + 1] + fed + tok.encode(" answer #### 408")
    assert comp == want
    assert [t for t, m in zip(comp, mine[0]) if not m] == fed
    assert completion_text(tok, comp) == (
        "so <|tool_call|>calculator 12*34<|/tool_call|><|tool_output|>408<|/tool_output|> answer #### 408"
    )
    assert out.ended == [True] and box.stats()["tools/calls"] == 1


def test_a_tokenizer_without_tool_tokens_uses_the_text_annotation(text_tok):
    tok = text_tok
    box = ToolBox(["calculator"])
    out, mine = generate_with_tools(scripted(tok, "so <<12*34= answer #### 408"), [[5, 6]], 64, tok, box)
    comp = out.tokens[0]
    assert tok.decode(comp) == completion_text(tok, comp) == "so <<12*34=408>> answer #### 408"
    assert tok.decode([t for t, m in zip(comp, mine[0]) if not m]) == "408>>"
    assert out.ended == [True] and box.stats()["tools/calls"] == 1


def test_a_completion_calling_a_hundred_times_is_cut_off_at_max_calls(tok, text_tok):
    box = ToolBox(["calculator"], max_calls=4)
    script = marked(tok, "<|tool_call|>", "1+1", "<|/tool_call|>")
    out, _ = generate_with_tools(scripted(tok, script, stop=False), [[5], [6]], 200, tok, box)
    st = box.stats()
    assert st["tools/calls"] == 8 and st["tools/cutoff/max_calls"] == 2  # 4 calls each, the 5th cut off
    assert out.ended == [False, False]
    one = script + marked(tok, "<|tool_output|>", "2", "<|/tool_output|>")
    assert out.tokens[0] == one * 4 + script
    out, _ = generate_with_tools(scripted(text_tok, "<<1+1=", stop=False), [[5]], 200, text_tok, box)
    assert text_tok.decode(out.tokens[0]) == "<<1+1=2>>" * 4 + "<<1+1=" and box.stats()["tools/cutoff/max_calls"] == 1


def test_an_imported_models_template_format_is_parsed_and_answered(tmp_path):
    """Qwen2.5's `<tool_call>{json}</tool_call>`: the JSON's name picks the tool, its one argument is
    the tool's input, the template's tool turn is fed, and a malformed call is answered with an error."""
    tok = HFTokenizer(qwen_dir(tmp_path, trl_template("qwen2_5")))
    _, pre, post = tok.tool_format()
    box = ToolBox(["calculator"])
    good = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "47*86"}}\n</tool_call>'
    out, mine = generate_with_tools(scripted(tok, good), [[5]], 200, tok, box)
    comp = out.tokens[0]
    fed = [t for t, m in zip(comp, mine[0]) if not m]
    assert fed == tok.encode(pre) + tok.encode("4042") + tok.encode(post) and comp[
        : len(tok.encode(good))
    ] == tok.encode(good)
    bad = "<tool_call>\nnot json\n</tool_call>"
    out, mine = generate_with_tools(scripted(tok, bad), [[5]], 200, tok, box)
    assert tok.decode([t for t, m in zip(out.tokens[0], mine[0]) if not m], skip_special=False).startswith(
        pre + "error: "
    )
    assert box.stats()["tools/cutoff/error"] == 1


def test_generate_batch_feeds_forced_ids_while_the_other_rows_sample(tmp_path):
    """A row fed ids by force_fn continues exactly as if those ids were in its prompt; the other rows of
    the batch sample what they would without it; without force_fn nothing changes."""
    from llmctl.model.generate import generate_batch
    from llmctl.train.sft import load_start

    ck, _ = H.setup(tmp_path)
    model, _, tok, _ = load_start(ck)
    prompts = [tok.encode("What is 2 plus 3?"), tok.encode("Hi there"), tok.encode("x")]
    plain = generate_batch(model, prompts, 12, temperature=0)
    assert plain.forced is None
    feed = tok.encode("408>>")

    def force_fn(i, ids):
        return feed if i == 0 and len(ids) == 2 else None

    out = generate_batch(model, prompts, 12, temperature=0, force_fn=force_fn)
    assert out.tokens[1:] == plain.tokens[1:]  # the other rows: unchanged
    row = out.tokens[0]
    assert row[:2] == plain.tokens[0][:2] and row[2 : 2 + len(feed)] == feed
    assert out.forced[0] == [False, False] + [True] * len(feed) + [False] * (len(row) - 2 - len(feed))
    alone = generate_batch(model, [prompts[0] + row[: 2 + len(feed)]], 12 - 2 - len(feed), temperature=0)
    assert row[2 + len(feed) :] == alone.tokens[0]  # as if the fed ids had been in the prompt


def test_the_batch_keeps_sampling_while_a_row_waits_on_a_tool(tmp_path):
    """A row whose force_fn returns a future (a tool running in a thread) is parked for exactly
    wait_steps steps: the batch runs that many forward passes while the tool runs, then waits for it;
    the other rows sample what they would anyway, the row goes on as if the output were in its prompt,
    and the tokens do not depend on how long the tool took."""
    from llmctl.model.generate import generate_batch
    from llmctl.train.sft import load_start

    ck, _ = H.setup(tmp_path)
    model, _, tok, _ = load_start(ck)
    prompts = [tok.encode("What is 2 plus 3?"), tok.encode("Hi there"), tok.encode("x")]
    plain = generate_batch(model, prompts, 12, temperature=0)
    feed = tok.encode("408>>")
    stamps: list[float] = []
    model.register_forward_hook(lambda *_: stamps.append(time.perf_counter()))

    def run(delay):
        span: list[float] = []
        pool = ThreadPoolExecutor(1)

        def tool():
            time.sleep(delay)
            span.append(time.perf_counter())
            return feed

        def force_fn(i, ids):
            if i == 0 and len(ids) == 2:
                span.append(time.perf_counter())
                return pool.submit(tool)
            return None

        stamps.clear()
        out = generate_batch(model, prompts, 12, temperature=0, force_fn=force_fn, wait_steps=4, max_waits=1)
        pool.shutdown()
        return out, [s for s in stamps if span[0] < s < span[1]]

    slow, during = run(1.0)
    assert len(during) == 1 + 4  # the step that made the call, then 4 parked steps, then it waited
    assert slow.tokens[1:] == plain.tokens[1:]
    row = slow.tokens[0]
    assert row[:2] == plain.tokens[0][:2] and row[2 : 2 + len(feed)] == feed and len(row) == 12
    assert slow.forced[0] == [False, False] + [True] * len(feed) + [False] * (12 - 2 - len(feed))
    alone = generate_batch(model, [prompts[0] + row[: 2 + len(feed)]], 12 - 2 - len(feed), temperature=0)
    assert row[2 + len(feed) :] == alone.tokens[0]
    fast, _ = run(0.0)
    assert fast.tokens == slow.tokens and fast.forced == slow.forced


def test_user_tools_run_apart_and_the_calculator_inline(user_tools, tok):
    box = ToolBox(["calculator", "my_tools:shout"], wait_steps=3)
    assert box.runs_apart("my_tools:shout x") and box.runs_apart("shout x") and not box.runs_apart("calculator 1+1")
    seen = {}

    def gen(prompts, max_new, force_fn=None, wait_steps=0, max_waits=0):
        seen["wait"] = (wait_steps, max_waits)
        a = force_fn(0, marked(tok, "<|tool_call|>", "shout hi", "<|/tool_call|>"))
        b = force_fn(0, marked(tok, "<|tool_call|>", "calculator 2*3", "<|/tool_call|>"))
        seen["out"] = (a, b)
        return Generated([[]], [True], [None], 0, 0.0, [[]])

    generate_with_tools(gen, [[5]], 8, tok, box)
    a, b = seen["out"]
    assert isinstance(a, Future) and a.result() == marked(tok, "<|tool_output|>", "HI", "<|/tool_output|>")
    assert b == marked(tok, "<|tool_output|>", "6", "<|/tool_output|>")
    assert seen["wait"] == (3, box.max_calls)


def call_then_answer(real, tok, head=None):
    """generate_batch with a force_fn that first feeds every row a call of 2*3 (`head`; by default
    llmctl's tool tokens) as if the model wrote it (a random tiny model would never call the tool by
    itself), then lets force_fn serve the call."""

    def gen(model, prompts, *a, **kw):
        ff = kw.get("force_fn")
        if ff is None:
            return real(model, prompts, *a, **kw)
        nonlocal head
        head = head or marked(tok, "<|tool_call|>", "2*3", "<|/tool_call|>")
        started = set()

        def wrapped(i, ids):
            if i not in started:
                started.add(i)
                return head + (ff(i, ids + head) or [])
            return ff(i, ids)

        out = real(model, prompts, *a, **{**kw, "force_fn": wrapped})
        for i, row in enumerate(out.forced):  # the scripted call counts as the model's text
            for j in range(1, min(len(row), 1 + len(head))):
                row[j] = False
        return out

    return gen


def test_tool_tokens_are_out_of_the_loss_and_the_kl(tmp_path, monkeypatch):
    import llmctl.train.rl.rollout as RR
    from llmctl.train.rl.algos import GRPO
    from llmctl.train.rl.rewards import Rewards
    from llmctl.train.sft import load_start

    ck, prompts = H.setup(tmp_path)
    D.init("cpu")
    model, _, tok, _ = load_start(ck)
    monkeypatch.setattr(RR, "generate_batch", call_then_answer(RR.generate_batch, tok))
    cfg = H.config("grpo", beta=0.1, tools=["calculator"], max_new_tokens=16)
    ref = load_start(ck)[0].eval()
    tr, _, _, _ = RR.load_prompts(prompts, tok, cfg.max_prompt_len, cfg.val_fraction, cfg.train.seed)
    batches = RR.RolloutBatches(model.train(), tr, tok, cfg, GRPO(cfg, ref), Rewards(cfg.reward), accum=2)
    b = next(batches)
    ro = batches.rollout
    assert ro["tools/calls"].item() == 16
    for i in range(16):
        comp = ro["completion"][i][ro["cmask"][i]].tolist()
        tool = ro["completion"][i][ro["cmask"][i] & ~ro["lmask"][i]].tolist()
        assert "<|tool_call|>2*3<|/tool_call|><|tool_output|>6<|/tool_output|>" in completion_text(tok, comp)
        assert tool == marked(tok, "<|tool_output|>", "6", "<|/tool_output|>")
    # the loss and its KL see the model's tokens only: changing the reference at tool tokens changes nothing
    loss, st = batches.algo.loss(model, b)
    b2 = dict(b, ref_logp=torch.where(b["lmask"] | ~b["cmask"], b["ref_logp"], b["ref_logp"] - 5.0))
    loss2, st2 = batches.algo.loss(model, b2)
    assert loss2.item() == loss.item() and st2["kl"].item() == st["kl"].item()


def test_tools_are_grpo_options_and_bad_limits_are_usage_errors():
    with pytest.raises(UsageError, match="--tool: GRPO options"):
        H.config("ppo", tools=["calculator"])
    with pytest.raises(UsageError, match="positive"):
        ToolBox(["calculator"], max_calls=0)


@pytest.mark.slow
def test_resume_mid_rollout_is_exact_with_tools_dynamic_sampling_and_every_objective_option(tmp_path, monkeypatch):
    import llmctl.train.rl.rollout as RR
    from llmctl.train.rl.trainer import run_rl
    from llmctl.train.sft import load_start

    ck, prompts = H.setup(tmp_path)
    tok = load_start(ck)[2]
    monkeypatch.setattr(RR, "generate_batch", call_then_answer(RR.generate_batch, tok))
    kw = dict(
        epochs=2,
        tools=["calculator"],
        dynamic_sampling=True,
        max_new_tokens=10,
        val_limit=2,
        beta=0.0,
        loss_type="dapo",
        mask_truncated=True,
        epsilon_high=0.28,
        importance_sampling="sequence",
        overlong_penalty=4,
    )
    tr = dict(ckpt_every=6, eval_every=6)
    run_rl(prompts, ck, tmp_path / "full", H.config("grpo", steps=6, **kw, train=tr))
    part = run_rl(prompts, ck, tmp_path / "part", H.config("grpo", steps=6, **kw, train=dict(tr, stop_after=3)))
    assert part["steps_done"] == 3
    run_rl(prompts, ck, tmp_path / "part", H.config("grpo", steps=6, **kw, train=tr))
    drop = ("tokens_per_s", "elapsed_s", "gen_tokens_per_s")
    read = lambda p: [  # noqa: E731
        {k: v for k, v in json.loads(ln).items() if k not in drop}
        for ln in (p / "metrics.jsonl").read_text().splitlines()
    ]
    a, b = read(tmp_path / "full"), read(tmp_path / "part")
    assert a == b and any(r.get("tools/calls", 0) > 0 for r in a) and any("dynamic/groups_drawn" in r for r in a)
    assert all("rewards/overlong/mean" in r and "entropy" in r for r in a if "loss" in r)


def _qwen_model(path, template):
    """A tiny random Qwen2 model with the Qwen-style tokenizer of tool_helpers and `template`."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    d = qwen_dir(path, template)
    n = HFTokenizer(d).vocab_size
    cfg = Qwen2Config(
        vocab_size=n,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    return d


@pytest.mark.slow
def test_an_imported_model_calls_tools_in_its_template_format_end_to_end(tmp_path, monkeypatch):
    import llmctl.train.rl.rollout as RR
    from llmctl.train.rl.trainer import run_rl

    _, prompts = H.setup(tmp_path)
    d = _qwen_model(tmp_path / "qwen", trl_template("qwen2_5"))
    tok = HFTokenizer(d)
    head = tok.encode('<tool_call>\n{"name": "calculator", "arguments": {"expression": "2*3"}}\n</tool_call>')
    monkeypatch.setattr(RR, "generate_batch", call_then_answer(RR.generate_batch, tok, head))
    cfg = H.config("grpo", steps=2, tools=["calculator"], max_new_tokens=60, val_limit=2, beta=0.0)
    run_rl(prompts, d, tmp_path / "run", cfg)
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("tools/calls", 0) for r in recs) >= 16
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert any(
        "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n6\n</tool_response><|im_end|>" in r["completion"]
        for r in rows
    )
    plain = _qwen_model(tmp_path / "plain", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(UsageError, match="no <tool_call>...</tool_call> tool-call format"):
        run_rl(prompts, plain, tmp_path / "run2", cfg)
    assert not (tmp_path / "run2" / "metrics.jsonl").exists()
