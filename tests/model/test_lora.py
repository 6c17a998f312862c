"""LoRA layers: frozen base, PEFT-format adapters that peft loads onto the exported model, merge, disable."""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import torch
from align_helpers import tiny_checkpoint
from safetensors import safe_open

from llmctl.cli import main
from llmctl.errors import UsageError
from llmctl.export.hf import export_hf
from llmctl.model.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint
from llmctl.model.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraConfig,
    adapters_disabled,
    apply_lora,
    lora_spec,
    merge_lora,
)
from llmctl.store.integrity import fingerprint_file

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _ids(vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(seed))


def _lora_checkpoint(tmp_path, targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", **kw):
    """A base checkpoint and a LoRA checkpoint on it with random (non-zero) B; returns (base, lora dir, model)."""
    base = tiny_checkpoint(tmp_path / "base", **kw)
    model, mc, tok_dir, _ = load_checkpoint(base)
    cfg = LoraConfig(r=4, alpha=12, targets=targets)
    apply_lora(model, cfg, seed=0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    spec = {**lora_spec(cfg), "base": {"path": str(base.resolve()), "fingerprint": fingerprint_file(base / WEIGHTS)}}
    ck = save_checkpoint(tmp_path / "lora", model, mc, tok_dir, manifest={"lora": spec})
    return base, ck, model.eval()


def test_only_adapters_train_and_a_fresh_adapter_changes_nothing(tmp_path):
    base = tiny_checkpoint(tmp_path / "base")
    model = load_checkpoint(base)[0]
    ids = _ids(model.cfg.vocab_size)
    with torch.no_grad():
        before = model(ids)
    names = apply_lora(model, LoraConfig(r=2, targets="q_proj,v_proj"))
    assert names == [f"layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{x}.weight" for m in names for x in "AB"}
    with torch.no_grad():
        assert torch.equal(model(ids), before)  # B starts at zero, as in PEFT


def test_unknown_target_is_a_one_line_error(tmp_path):
    model = load_checkpoint(tiny_checkpoint(tmp_path / "base"))[0]
    with pytest.raises(UsageError) as e:
        apply_lora(model, LoraConfig(r=2, targets="q_proj,foo_proj"))
    assert "foo_proj" in str(e.value) and "\n" not in str(e.value) and "q_proj" in str(e.value).split(";")[1]
    assert not any(p.requires_grad is False for p in model.parameters())  # nothing changed


def test_checkpoint_holds_the_adapters_only_in_peft_names(tmp_path):
    _, ck, model = _lora_checkpoint(tmp_path)
    assert not (ck / WEIGHTS).exists() and (ck / ADAPTER_WEIGHTS).is_file()
    with safe_open(str(ck / ADAPTER_WEIGHTS), "pt") as f:
        keys = set(f.keys())
    want = {f"base_model.model.model.{n}" for n, p in model.named_parameters() if p.requires_grad}
    assert keys == want and len(keys) == 2 * 7 * 2
    conf = json.loads((ck / ADAPTER_CONFIG).read_text())
    assert conf["r"] == 4 and conf["lora_alpha"] == 12 and conf["peft_type"] == "LORA"


def test_peft_loads_the_adapter_onto_the_exported_base_with_llmctl_logits(tmp_path):
    base, ck, model = _lora_checkpoint(tmp_path)
    export_hf(base, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(hf, str(ck)).eval()
    bad = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message)]
    assert not bad, bad
    b = pm.base_model.model.model.layers[1].mlp.down_proj.lora_B.default.weight
    assert b.abs().sum() > 0  # the adapter's B was loaded, not left at its zero init
    ids = _ids(model.cfg.vocab_size)
    with torch.no_grad():
        ours = model(ids)
        theirs = pm(ids).logits
        with adapters_disabled(model):
            base_logits = model(ids)
        with pm.disable_adapter():
            theirs_base = pm(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    assert (base_logits - theirs_base).abs().max().item() < 1e-4
    assert (ours - base_logits).abs().max().item() > 1e-2  # the adapter matters
    # llmctl loads its own LoRA checkpoint back to the same function
    again = load_checkpoint(ck)[0]
    with torch.no_grad():
        assert torch.allclose(again(ids), ours, atol=1e-6)


def test_merged_export_equals_the_adapter_model(tmp_path):
    base, ck, model = _lora_checkpoint(tmp_path, targets="q_proj,v_proj,down_proj")
    export_hf(ck, tmp_path / "merged", merge=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    ids = _ids(model.cfg.vocab_size, seed=2)
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() < 1e-4
        merged = merge_lora(load_checkpoint(ck)[0])
        assert not any("lora" in n for n, _ in merged.named_parameters())
        assert (merged(ids) - model(ids)).abs().max().item() < 1e-5


def cli(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """Run `llmctl ARGS` in this process (the console entry point): (exit code, stderr lines)."""
    monkeypatch.setattr(sys, "argv", ["llmctl", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def test_export_merge_without_adapters_and_lora_export_without_merge_are_one_line_errors(tmp_path, monkeypatch, capsys):
    base, ck, _ = _lora_checkpoint(tmp_path)
    code, lines = cli(monkeypatch, capsys, "export", str(base), "-o", str(tmp_path / "out1"), "--merge")
    assert code == 2 and len(lines) == 1 and "no LoRA adapters" in lines[0], lines
    code, lines = cli(monkeypatch, capsys, "export", str(ck), "-o", str(tmp_path / "out2"))
    assert code == 2 and len(lines) == 1 and "--merge" in lines[0], lines
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_a_changed_base_is_refused(tmp_path):
    base, ck, _ = _lora_checkpoint(tmp_path)
    tiny_checkpoint(base, seed=9)  # another model written over the base
    with pytest.raises(UsageError, match="weights changed"):
        load_checkpoint(ck)
