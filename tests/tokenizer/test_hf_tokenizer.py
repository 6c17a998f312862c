"""A Hugging Face model's own tokenizer and chat template: the ids equal transformers'
`apply_chat_template` token for token, and the SFT mask covers exactly the assistant replies and
their end-of-turn token. Tokenizers are trained here (nothing is downloaded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from llmctl.errors import UsageError  # noqa: E402
from llmctl.tokenizer.chat import encode_chat  # noqa: E402
from llmctl.tokenizer.hf import HFTokenizer  # noqa: E402
from llmctl.tokenizer.load import load_tokenizer  # noqa: E402

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
# ChatML with transformers' {% generation %} tag around what the assistant writes (content + <|im_end|>)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
STYLES = {"chatml": (CHATML, None, "<|im_end|>"), "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>")}
CONVERSATION = [
    {"role": "system", "content": "you are a helpful assistant."},
    {"role": "user", "content": "what is two plus two?"},
    {"role": "assistant", "content": "it is four."},
    {"role": "user", "content": "hello, assistant"},
    {"role": "assistant", "content": "hello world"},
    {"role": "user", "content": "what is four?"},
    {"role": "assistant", "content": " assistant\n"},  # the role's name as content, spaces to strip
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    text = "hello world, what is two plus two? it is four. you are a helpful assistant."
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    t.train_from_iterator([text] * 50, trainer)
    out = {}
    for name, (tmpl, bos, eos) in STYLES.items():
        d = tmp_path_factory.mktemp(name)
        PreTrainedTokenizerFast(
            tokenizer_object=t, bos_token=bos, eos_token=eos, pad_token="<|endoftext|>", chat_template=tmpl
        ).save_pretrained(d)
        out[name] = d
    return out


@pytest.mark.parametrize("style", list(STYLES))
def test_chat_ids_equal_transformers(dirs, style):
    ref = AutoTokenizer.from_pretrained(dirs[style])
    tok = HFTokenizer(dirs[style])
    for n in (2, 3, 5, 7):
        msgs = CONVERSATION[:n]
        for gen in (False, True):
            want = ref.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen, return_dict=True)
            ids, mask = tok.encode_chat(msgs, add_generation_prompt=gen)
            assert ids == list(want["input_ids"]) and len(mask) == len(ids)
    assert tok.encode("hello world") == ref.encode("hello world", add_special_tokens=False)
    assert tok.decode(tok.encode("what is two?")) == "what is two?"


@pytest.mark.parametrize("style", list(STYLES))
def test_mask_is_exactly_the_assistant_replies(dirs, style):
    tok = HFTokenizer(dirs[style])
    end = STYLES[style][2]
    ids, mask = encode_chat(tok, CONVERSATION)  # the chat module delegates to the model's template
    trained = [i for i, m in zip(ids, mask) if m]
    trim = style == "llama3"  # that template trims contents, ChatML writes them as given
    replies = [(m["content"].strip() if trim else m["content"]) + end for m in CONVERSATION if m["role"] == "assistant"]
    assert tok.decode(trained, skip_special=False) == "".join(replies)
    # the trained tokens are exactly the tokens of each reply and its end marker, in place
    for r in replies:
        r_ids = tok.encode(r)
        assert any(ids[i : i + len(r_ids)] == r_ids and all(mask[i : i + len(r_ids)]) for i in range(len(ids)))


def test_mask_agrees_with_the_generation_tag(dirs):
    ref = AutoTokenizer.from_pretrained(dirs["chatml"])
    out = ref.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    _, mask = HFTokenizer(dirs["chatml"]).encode_chat(CONVERSATION)
    assert mask == [bool(m) for m in out["assistant_masks"]] and any(mask)


@pytest.mark.parametrize("style", list(STYLES))
def test_response_ids_and_stops(dirs, style):
    tok = load_tokenizer(dirs[style])
    assert isinstance(tok, HFTokenizer)
    end_id = tok.special_ids[STYLES[style][2]]
    prompt = CONVERSATION[:2]
    r = tok.response_ids(prompt, "it is four.")
    assert r == tok.encode("it is four.") + [end_id]
    p_ids = tok.apply_chat_template(prompt, add_generation_prompt=True)
    assert (p_ids + r) == tok.apply_chat_template(CONVERSATION[:3])[: len(p_ids) + len(r)]
    assert end_id in tok.stop_ids and tok.eos_id == end_id
    assert tok.pad_id == tok.special_ids["<|endoftext|>"]


def test_generation_config_stop_ids(dirs, tmp_path):
    d = tmp_path / "t"
    shutil.copytree(dirs["llama3"], d)
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 6]}))
    tok = HFTokenizer(d)
    assert set(tok.stop_ids) >= {0, 6, tok.eos_id}


def test_no_template_and_no_tokenizer_are_one_line_errors(dirs, tmp_path):
    with pytest.raises(UsageError, match="no tokenizer.json"):
        HFTokenizer(tmp_path)
    d = tmp_path / "t"
    shutil.copytree(dirs["llama3"], d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="has no chat template"):
        HFTokenizer(d).encode_chat(CONVERSATION[:2])


REAL = {"qwen2_5": "<|im_end|>", "qwen3": "<|im_end|>", "llama3_1": "<|eot_id|>", "llama3_2": "<|eot_id|>"}


@pytest.mark.parametrize("name", list(REAL))
def test_shipped_model_templates(dirs, tmp_path, name):
    """The chat templates of Qwen2.5, Qwen3, Llama 3.1 and 3.2 as TRL ships them (tools, dates,
    <think> handling): ids equal transformers', the mask is the replies and their end tokens."""
    trl = pytest.importorskip("trl")
    src = Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja"
    if not src.is_file():
        pytest.skip(f"this TRL has no {src.name}")
    base = PreTrainedTokenizerFast.from_pretrained(dirs["chatml"])
    base.chat_template, base.eos_token = src.read_text(), REAL[name]
    base.bos_token = "<|begin_of_text|>"
    base.save_pretrained(tmp_path)
    ref, tok = AutoTokenizer.from_pretrained(tmp_path), HFTokenizer(tmp_path)
    msgs = CONVERSATION[:5]
    for n in (2, 3, 5):
        for gen in (False, True):
            want = ref.apply_chat_template(msgs[:n], tokenize=True, add_generation_prompt=gen, return_dict=True)
            assert tok.encode_chat(msgs[:n], gen)[0] == list(want["input_ids"])
    ids, mask = tok.encode_chat(msgs)
    end = REAL[name]
    assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False) == f"it is four.{end}hello world{end}"


def test_sentencepiece_style_tokenizer_and_mistral_template(tmp_path):
    """Llama-2/Mistral style: a "▁"-prepending normalizer, byte fallback, `[INST]` turns, replies ended by eos."""
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"])
    t.train_from_iterator(["hello world, what is two plus two? it is four."] * 50, trainer)
    template = (
        "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
    )
    PreTrainedTokenizerFast(
        tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=template
    ).save_pretrained(tmp_path)
    ref, tok = AutoTokenizer.from_pretrained(tmp_path), HFTokenizer(tmp_path)
    conv = [CONVERSATION[1], CONVERSATION[2], {"role": "user", "content": "hello"}, CONVERSATION[4]]
    ids, mask = tok.encode_chat(conv)
    assert ids == list(ref.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"])
    # the word-boundary marker that starts a reply is part of the reply as the model writes it
    assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False) == "it is four.</s> hello world</s>"
    assert tok.response_ids(conv[:1], "it is four.")[-1] == tok.eos_id
