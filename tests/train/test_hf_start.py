"""Training and generating from a Hugging Face model directory: `--from HF_DIR` works end to end,
the data is encoded in the model's own chat template, and the result exports back to the source class."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from hf_helpers import bpe, qwen2_chat_dir  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from llmctl.cli.app import app  # noqa: E402
from llmctl.data.chat_data import encode_conversation, encode_responses  # noqa: E402
from llmctl.eval.lm import load_lm  # noqa: E402
from llmctl.model.checkpoint import load_checkpoint  # noqa: E402
from llmctl.tokenizer.load import load_tokenizer  # noqa: E402
from llmctl.train.dpo import collate_dpo  # noqa: E402
from llmctl.train.dpo_loss import response_logps  # noqa: E402
from llmctl.train.finetune import load_start  # noqa: E402
from llmctl.train.sft import collate_windows, sft_loss  # noqa: E402

CONV = [
    {"role": "user", "content": "what is two plus two?"},
    {"role": "assistant", "content": "it is four."},
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return qwen2_chat_dir(tmp_path_factory.mktemp("qwen2") / "m")


def test_sft_example_is_the_models_own_template(hf_dir):
    tok = load_tokenizer(hf_dir)
    e = encode_conversation(tok, CONV, 256)
    want = AutoTokenizer.from_pretrained(hf_dir).apply_chat_template(CONV, tokenize=True, return_dict=True)
    # ChatML writes "\n" after <|im_end|>; the SFT example ends at the end-of-turn token
    assert e.ids == list(want["input_ids"])[:-1]
    assert tok.decode([i for i, m in zip(e.ids, e.mask) if m], skip_special=False) == "it is four.<|im_end|>"


@pytest.mark.slow
def test_sft_from_hf_dir_then_export(hf_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": CONV}) + "\n" for _ in range(40)))
    run = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        [
            "sft",
            str(data),
            "--from",
            str(hf_dir),
            "-o",
            str(run),
            "--steps",
            "2",
            "--max-len",
            "64",
            "--micro-batch",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    model, cfg, tok_dir, _ = load_checkpoint(run)
    assert cfg.hf_arch == "Qwen2ForCausalLM" and (tok_dir / "tokenizer.json").is_file()
    assert not list(tok_dir.glob("*.safetensors"))  # only the tokenizer files were copied
    lm = load_lm(run)  # eval of the run: llmctl's engine with the model's own chat template
    want = AutoTokenizer.from_pretrained(hf_dir).apply_chat_template(CONV[:1], add_generation_prompt=True)
    assert lm.codec.chat(CONV[:1]) == list(want["input_ids"] if hasattr(want, "keys") else want)
    r = CliRunner().invoke(app, ["export", str(run), "-o", str(tmp_path / "hf")])
    assert r.exit_code == 0, r.output
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert type(back).__name__ == "Qwen2ForCausalLM"
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").chat_template is not None


def test_generate_chat_from_hf_dir(hf_dir):
    r = CliRunner().invoke(app, ["generate", str(hf_dir), "hello", "--chat", "--temperature", "0", "-n", "5"])
    assert r.exit_code == 0, r.output


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["no-weights", "gpt2"])
def test_sft_bad_hf_dir_is_one_line_and_writes_nothing(hf_dir, tmp_path, kind):
    d = tmp_path / "bad"
    d.mkdir()
    c = json.loads((hf_dir / "config.json").read_text())
    if kind == "gpt2":
        c["architectures"] = ["GPT2LMHeadModel"]
        (d / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    (d / "config.json").write_text(json.dumps(c))
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"messages": CONV}) + "\n")
    cmd = [sys.executable, "-m", "llmctl", "sft", str(data), "--from", str(d), "-o", str(tmp_path / "run")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr)
    assert ("no safetensors weights" if kind == "no-weights" else "unsupported architecture GPT2LMHeadModel") in lines[
        0
    ]
    assert not (tmp_path / "run").exists()


LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
ROWS = [
    {
        "prompt": [{"role": "user", "content": "what is two plus two?"}],
        "completion": [{"role": "assistant", "content": "it is four."}],
    },
    {
        "prompt": [{"role": "system", "content": "you are a helpful assistant."}, {"role": "user", "content": "hello"}],
        "completion": [{"role": "assistant", "content": "hello world, the sky is blue."}],
    },
    {
        "prompt": [{"role": "user", "content": "what is the sky?"}],
        "completion": [{"role": "assistant", "content": "blue"}],
    },
]


def llama3_dir(d):
    """A LlamaForCausalLM with a Llama-3-style chat template (nothing after <|eot_id|>)."""

    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe(),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|endoftext|>",
        chat_template=LLAMA3,
    )
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d, tok


@pytest.mark.slow
def test_sft_first_loss_equals_trl(tmp_path):
    """TRL's SFTTrainer (completion-only loss, prompt-completion rows, a Llama-3 template: nothing
    follows <|eot_id|>) logs the same first-step loss as llmctl's SFT loss on the same batch."""
    pytest.importorskip("trl")
    from trl import SFTConfig, SFTTrainer

    d, tok = llama3_dir(tmp_path / "m")
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        completion_only_loss=True,
        max_steps=1,
        logging_steps=1,
        per_device_train_batch_size=len(ROWS),
        use_cpu=True,
        report_to=[],
        bf16=False,
        packing=False,
        save_strategy="no",
        seed=0,
    )
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tok)
    trainer.train()
    want = trainer.state.log_history[0]["loss"]

    m, _, t, _ = load_start(d)
    examples = [encode_conversation(t, r["prompt"] + r["completion"], 256) for r in ROWS]
    loss, info = sft_loss(m, collate_windows(examples, [[i] for i in range(len(ROWS))], t.pad_id))
    assert info["response_tokens"] == sum(len(t.encode(r["completion"][0]["content"])) + 1 for r in ROWS)
    assert loss.item() == pytest.approx(want, abs=1e-5)


@pytest.mark.slow
def test_dpo_first_logps_equal_trl(tmp_path):
    """TRL's DPOTrainer on conversational pairs logs, at step 0 (policy = reference: loss log 2),
    the batch means of the summed response log-probs that llmctl computes for the same pairs."""
    pytest.importorskip("trl")
    from trl import DPOConfig, DPOTrainer

    d, tok = llama3_dir(tmp_path / "m")
    rows = [
        {
            "prompt": [{"role": "user", "content": "what is two plus two?"}],
            "chosen": [{"role": "assistant", "content": "it is four."}],
            "rejected": [{"role": "assistant", "content": "the sky is blue."}],
        },
        {
            "prompt": [{"role": "user", "content": "hello"}],
            "chosen": [{"role": "assistant", "content": "hello world"}],
            "rejected": [{"role": "assistant", "content": "what?"}],
        },
    ]
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=1,
        logging_steps=1,
        per_device_train_batch_size=len(rows),
        use_cpu=True,
        report_to=[],
        bf16=False,
        save_strategy="no",
        seed=0,
        beta=0.1,
    )
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["loss"] == pytest.approx(0.693147, abs=1e-5)

    m, _, t, _ = load_start(d)
    pairs = [
        tuple(encode_responses(t, r["prompt"], [r["chosen"][0]["content"], r["rejected"][0]["content"]], 256))
        for r in rows
    ]
    b = collate_dpo(pairs, t.pad_id)  # rows: every chosen, then every rejected
    with torch.no_grad():
        logps = response_logps(m, b["input_ids"], b["labels"])
    assert logps[: len(rows)].mean().item() == pytest.approx(log["logps/chosen"], abs=1e-4)
    assert logps[len(rows) :].mean().item() == pytest.approx(log["logps/rejected"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dpo", "reward", "rl"])
def test_preference_and_rl_stages_from_hf_dir(hf_dir, tmp_path, stage):
    """dpo, reward and GRPO run from a Hugging Face directory (responses in the model's own template)."""
    rows = [
        {
            "prompt": f"what is {i} plus two?",
            "chosen": "it is four.",
            "rejected": "the sky is blue.",
            "response": "four",
        }
        for i in range(24)
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    small = ["--steps", "2", "--batch-size", "4", "--micro-batch", "4", "--eval-every", "0", "--max-len", "64"]
    extra = {
        "dpo": [],
        "reward": [],
        "rl": [
            "--algo",
            "grpo",
            "-G",
            "2",
            "--reward",
            "exact_match",
            "--rollout-prompts",
            "4",
            "--max-new-tokens",
            "4",
        ],
    }[stage]
    if stage == "rl":
        small = [a for a in small if a not in ("--max-len", "64")]
    run = tmp_path / "run"
    r = CliRunner().invoke(app, [stage, str(data), "--from", str(hf_dir), "-o", str(run), *small, *extra])
    assert r.exit_code == 0, (r.output, r.exception)
    assert (run / "_manifest.json").is_file()


@pytest.mark.slow
def test_continued_pretraining_from_hf_dir(hf_dir, tmp_path):
    """`tokenize encode -t HF_DIR` then `pretrain --from HF_DIR`: training starts from the source's
    weights and keeps its architecture; a window longer than its context is one line."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "".join(json.dumps({"text": f"hello world, what is two plus two? it is four. {i}"}) + "\n" for i in range(64))
    )
    cli = CliRunner()
    r = cli.invoke(app, ["data", "import", str(docs), "-o", str(tmp_path / "d"), "--format", "docs"])
    assert r.exit_code == 0, (r.output, r.exception)
    r = cli.invoke(app, ["tokenize", "encode", str(tmp_path / "d"), "-t", str(hf_dir), "-o", str(tmp_path / "tok")])
    assert r.exit_code == 0, (r.output, r.exception)
    run = tmp_path / "run"
    args = ["pretrain", str(tmp_path / "tok"), "-t", str(hf_dir), "-o", str(run), "--from", str(hf_dir)]
    small = ["--steps", "2", "--seq-len", "32", "--batch-tokens", "128", "--micro-batch", "4", "--eval-every", "0"]
    r = cli.invoke(app, args + small + ["--lr", "1e-9", "--warmup", "0"])
    assert r.exit_code == 0, (r.output, r.exception)
    trained, cfg, *_ = load_checkpoint(run)
    assert cfg.hf_arch == "Qwen2ForCausalLM"
    source, *_ = load_checkpoint(hf_dir)  # lr 1e-9: the weights are still the source's
    for (name, a), (_, b) in zip(trained.state_dict().items(), source.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    r = cli.invoke(
        app,
        [
            "pretrain",
            str(tmp_path / "tok"),
            "-t",
            str(hf_dir),
            "-o",
            str(tmp_path / "r2"),
            "--from",
            str(hf_dir),
            "--seq-len",
            "1024",
        ],
    )
    assert r.exit_code != 0 and "exceeds the model's max_seq_len 256" in str(r.exception)
