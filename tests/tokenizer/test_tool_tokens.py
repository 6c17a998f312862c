"""Tool calls in the chat format: llmctl's tokenizer carries the tool-call markers as control tokens
(an older tokenizer without them writes the calls as text), a conversation with `tool_calls` and
`tool` turns encodes to exactly the layout `llmctl rl --tool` generates, and the SFT mask covers the
assistant's tokens (its calls included) and never a tool's output; a Hugging Face template with a
tool-call format (Qwen2.5's) gives transformers' ids, the same mask rule, and its call format."""

from __future__ import annotations

import json

import pytest
from tool_helpers import TEXTS, call, qwen_dir, trl_template

from llmctl.data.chat_data import TOOL_CALLS, encode_conversation, import_data
from llmctl.errors import UsageError
from llmctl.tokenizer.base import TOOL_TOKENS
from llmctl.tokenizer.chat import encode_chat, render_chat
from llmctl.tokenizer.hf import HFTokenizer
from llmctl.tokenizer.spm import Tokenizer
from llmctl.train.sft import labels_for

CONV = [
    {"role": "user", "content": "What is 47 times 86?"},
    {"role": "assistant", "content": "Let me compute.", "tool_calls": [call("47*86")]},
    {"role": "tool", "content": "4042"},
    {"role": "assistant", "content": "#### 4042"},
]
TWO_CALLS = [
    {"role": "user", "content": "12*3 and 5+5?"},
    {"role": "assistant", "content": "", "tool_calls": [call("12*3"), call("5+5")]},
    {"role": "tool", "content": "36"},
    {"role": "tool", "content": "10"},
    {"role": "assistant", "content": "36, 10"},
]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, 400)


@pytest.fixture(scope="module")
def old_tok():
    return Tokenizer.train(TEXTS, 400, tool_tokens=False)


def test_tool_markers_are_control_tokens_that_text_never_produces(tok, old_tok, tmp_path):
    s = tok.special_ids
    assert [s[t] for t in TOOL_TOKENS] == [8, 9, 10, 11]
    for t in TOOL_TOKENS:
        assert s[t] not in tok.encode(f"typed {t} by a user") and tok.is_special(s[t])
    tok.save(tmp_path / "new")
    assert Tokenizer.load(tmp_path / "new").special_ids == s
    cfg = json.loads((tmp_path / "new" / "special_tokens_map.json").read_text())
    assert cfg["additional_special_tokens"][-4:] == list(TOOL_TOKENS)
    old_tok.save(tmp_path / "old")  # a tokenizer without them still loads (tool calls are then text)
    assert not set(TOOL_TOKENS) & set(Tokenizer.load(tmp_path / "old").special_ids)


def test_tool_turns_encode_to_the_rollout_layout_and_mask_only_the_assistant(tok):
    s = tok.special_ids
    ids, mask = encode_chat(tok, CONV)
    user = [s["<|user|>"], *tok.encode("What is 47 times 86?"), s["<|end|>"], s["<|assistant|>"]]
    said = tok.encode("Let me compute.")
    the_call = [s["<|tool_call|>"], *tok.encode("calculator 47*86"), s["<|/tool_call|>"]]
    output = [s["<|tool_output|>"], *tok.encode("4042"), s["<|/tool_output|>"]]
    final = [*tok.encode("#### 4042"), s["<|end|>"]]
    assert ids == user + said + the_call + output + final
    assert mask == [False] * len(user) + [True] * (len(said) + len(the_call)) + [False] * len(output) + [True] * len(
        final
    )
    assert tok.decode(ids, skip_special=False) == render_chat(CONV)
    # the prompt RL samples from is the conversation up to the tool's output: the assistant goes on
    prompt = tok.apply_chat_template(CONV[:3], add_generation_prompt=True)
    assert prompt == user + said + the_call + output
    # two calls: each call is followed by its own output (as a rollout feeds them)
    ids, mask = encode_chat(tok, TWO_CALLS)
    text = render_chat(TWO_CALLS)
    assert text.endswith(
        "<|assistant|><|tool_call|>calculator 12*3<|/tool_call|><|tool_output|>36<|/tool_output|>"
        "<|tool_call|>calculator 5+5<|/tool_call|><|tool_output|>10<|/tool_output|>36, 10<|end|>"
    )
    assert tok.decode(ids, skip_special=False) == text
    trained = tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False)
    assert trained == "<|tool_call|>calculator 12*3<|/tool_call|><|tool_call|>calculator 5+5<|/tool_call|>36, 10<|end|>"


def test_without_tool_tokens_the_calls_are_gsm8k_text_annotations(old_tok):
    ids, mask = encode_chat(old_tok, CONV)
    s = old_tok.special_ids
    head = [s["<|user|>"], *old_tok.encode("What is 47 times 86?"), s["<|end|>"], s["<|assistant|>"]]
    body = [*old_tok.encode("Let me compute."), *old_tok.encode("<<calculator 47*86=")]
    out = old_tok.encode("4042>>")
    final = [*old_tok.encode("#### 4042"), s["<|end|>"]]
    assert ids == head + body + out + final
    assert mask == [False] * len(head) + [True] * len(body) + [False] * len(out) + [True] * len(final)


def test_sft_labels_train_the_call_and_the_answer_never_the_output(tok):
    e = encode_conversation(tok, CONV, max_len=128)
    ids, want = encode_chat(tok, CONV)
    assert e.ids == ids and e.mask == want
    labels = labels_for(e)
    targets = [t for t in labels if t != -100]
    assert targets == [i for i, m in zip(ids, want) if m]
    s = tok.special_ids
    assert s["<|tool_output|>"] not in targets and tok.encode("4042")[0] in targets  # 4042 in the answer only
    assert targets.count(s["<|/tool_call|>"]) == 1


@pytest.mark.parametrize(
    "bad,match",
    [
        ([{"role": "tool", "content": "1"}], "must answer"),
        (
            [{"role": "assistant", "content": "", "tool_calls": [call("1")]}, {"role": "user", "content": "x"}],
            "not answered",
        ),
        ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]}], "tool call must be"),
        ([{"role": "user", "content": "x", "tool_calls": []}], "on an assistant"),
    ],
)
def test_malformed_tool_turns_are_one_line_errors(tok, bad, match):
    with pytest.raises(UsageError, match=match):
        encode_chat(tok, bad)
    with pytest.raises(UsageError, match="unanswered tool call"):
        encode_conversation(tok, CONV[:2], 64)


def test_data_import_counts_tool_conversations_instead_of_dropping_their_calls(tmp_path):
    src = tmp_path / "rows.jsonl"
    plain = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    src.write_text(json.dumps(plain) + "\n" + json.dumps({"messages": CONV}) + "\n")
    m = import_data(src, tmp_path / "out", "sft")
    assert m["stats"]["kept"] == 1 and m["stats"]["skipped"] == {TOOL_CALLS: 1}


# ---------------------------------------------------------------- a Hugging Face template with tools


def test_qwen_template_tool_turns_equal_transformers_and_mask_the_calls(tmp_path):
    from transformers import AutoTokenizer

    d = qwen_dir(tmp_path, trl_template("qwen2_5"))
    ref, tok = AutoTokenizer.from_pretrained(d), HFTokenizer(d)
    for msgs in (CONV, TWO_CALLS):
        for n in range(2, len(msgs) + 1):
            want = ref.apply_chat_template(msgs[:n], tokenize=True, return_dict=True)["input_ids"]
            assert tok.encode_chat(msgs[:n])[0] == list(want)
    ids, mask = tok.encode_chat(CONV)
    trained = tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False)
    the_call = '\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "47*86"}}\n</tool_call><|im_end|>'
    assert trained == "Let me compute." + the_call + "#### 4042<|im_end|>"
    e = encode_conversation(tok, CONV, 256)  # what SFT trains on: the same, through the last <|im_end|>
    n = len(e.ids)
    assert (e.ids, e.mask) == (ids[:n], mask[:n]) and tok.decode(ids[n:], skip_special=False) == "\n"
    ids, mask = tok.encode_chat(TWO_CALLS)
    trained = tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False)
    assert "36\n</tool_response>" not in trained and trained.count("<tool_call>") == 2
    assert trained.endswith("</tool_call><|im_end|>36, 10<|im_end|>")


def test_qwen_tool_format_and_a_template_without_one(tmp_path):
    tok = HFTokenizer(qwen_dir(tmp_path / "q", trl_template("qwen2_5")))
    close, pre, post = tok.tool_format()
    assert (close, pre, post) == (
        "</tool_call>",
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n",
        "\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
    )
    plain = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
    with pytest.raises(UsageError, match="no <tool_call>...</tool_call> tool-call format"):
        HFTokenizer(qwen_dir(tmp_path / "p", plain)).tool_format()


def test_the_saved_chat_template_renders_tool_turns_as_llmctl_does(tok, old_tok, tmp_path):
    """transformers' apply_chat_template on a saved llmctl tokenizer gives encode_chat's ids, tool turns
    included; a tokenizer without the tool tokens gets the text annotation's template (same text)."""
    from transformers import AutoTokenizer

    tok.save(tmp_path / "new")
    hf = AutoTokenizer.from_pretrained(tmp_path / "new")
    for msgs in (CONV, TWO_CALLS):
        for n in range(1, len(msgs) + 1):
            for gen in (False, True):
                want = encode_chat(tok, msgs[:n], add_generation_prompt=gen)[0]
                got = hf.apply_chat_template(msgs[:n], tokenize=True, add_generation_prompt=gen, return_dict=True)
                assert list(got["input_ids"]) == want, (n, gen)
    old_tok.save(tmp_path / "old")
    hf_old = AutoTokenizer.from_pretrained(tmp_path / "old")
    text = hf_old.apply_chat_template(CONV, tokenize=False)
    assert text == old_tok.decode(encode_chat(old_tok, CONV)[0], skip_special=False)
    assert "<<calculator 47*86=4042>>#### 4042<|end|>" in text
