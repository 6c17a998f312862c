"""LoRA: low-rank adapters on the Transformer's linear projections, saved in PEFT's format.

`apply_lora` replaces each targeted `nn.Linear` (matched by its last name: q_proj, k_proj, v_proj,
o_proj, gate_proj, up_proj, down_proj) with a `LoRALinear` that keeps the frozen `weight` (and
`bias`) under the same names and adds y += (alpha / r) * B(A(dropout(x))), A (r x in) Kaiming-uniform
as PEFT initialises it, B (out x r) zeros, so a fresh adapter leaves the model unchanged. Every
other parameter is frozen: only `lora_A`/`lora_B` train and are saved, plus any head a stage trains
in full (the reward model's score head, PPO's value head: PEFT's `modules_to_save`).

An adapter directory is what PEFT writes for a LlamaForCausalLM: `adapter_config.json` and
`adapter_model.safetensors` with keys `base_model.model.model.<llmctl name>.lora_{A,B}.weight`, so
`peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<llmctl export of the base>), dir)`
computes what llmctl does. `adapters_disabled(model)` runs the base model (the DPO/RL reference,
without a second copy); `merge_lora` folds W += (alpha / r) B A and restores plain `nn.Linear`s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from llmctl.errors import UsageError
from llmctl.store import fs

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model.model."  # PeftModel -> LlamaForCausalLM -> LlamaModel (llmctl's names)
HEAD_PREFIX = "base_model.model."  # a fully trained head (PEFT's modules_to_save), e.g. PPO's value_head
DEFAULT_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


@dataclass
class LoraConfig:
    r: int = 0  # adapter rank; 0 = full fine-tuning
    alpha: float | None = None  # scaling alpha / r; None = 2 r
    dropout: float = 0.0  # dropout on the adapter's input (training only)
    targets: str = DEFAULT_TARGETS  # comma-separated linear layer names

    def __post_init__(self) -> None:
        if self.r < 0:
            raise UsageError(f"--lora-r must be 0 (off) or positive, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--lora-dropout must be in [0, 1), got {self.dropout}")
        if self.r and not self.target_list():
            raise UsageError("--lora-targets is empty; name layers such as q_proj,v_proj")

    def target_list(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r


class LoRALinear(nn.Linear):
    """A frozen linear layer plus a trainable low-rank update; `disabled` = the base layer alone."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float, generator: torch.Generator):
        nn.Module.__init__(self)  # not nn.Linear.__init__: the base's weight is kept, not re-created
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, **kw)
        a = torch.empty(r, base.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        with torch.no_grad():
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.zero_()
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.disabled = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.disabled:
            return y
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain nn.Linear holding W + scaling * B A (this layer's weight tensor, updated in place)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling
            self.weight.add_(delta.to(self.weight.dtype))
        lin.weight = self.weight
        lin.bias = self.bias
        return lin


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def apply_lora(model: nn.Module, cfg: LoraConfig, seed: int = 0) -> list[str]:
    """Freeze `model` and put a LoRA adapter on every linear layer inside `model.layers` whose last
    name is in cfg.targets; returns the adapted module names. One-line UsageError when a target
    names no linear layer (MoE experts are not nn.Linear and cannot be targeted)."""
    if has_lora(model):
        raise UsageError("the model already has LoRA adapters: merge them first")
    targets = cfg.target_list()
    linears = {n: m for n, m in model.named_modules() if n.startswith("layers.") and type(m) is nn.Linear}
    names = sorted({n.rsplit(".", 1)[-1] for n in linears})
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise UsageError(f"LoRA targets {','.join(unknown)} match no linear layer; layers: {','.join(names)}")
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    done = []
    for n, m in linears.items():
        if n.rsplit(".", 1)[-1] in targets:
            _set_module(model, n, LoRALinear(m, cfg.r, cfg.scale_alpha, cfg.dropout, g))
            done.append(n)
    return done


def merge_lora(model: nn.Module, where: Any = "model") -> nn.Module:
    """Fold every adapter into its base weight and restore plain nn.Linear layers (in place)."""
    layers = lora_layers(model)
    if not layers:
        raise UsageError(f"--merge: {where} has no LoRA adapters (a full fine-tuning run: export it without --merge)")
    for n, m in layers.items():
        _set_module(model, n, m.merged())
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes its base (adapter-free) function."""
    layers = list(lora_layers(model).values())
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m in layers:
            m.disabled = False


class BaseReference:
    """The policy with its adapters off, under no_grad: the frozen reference of DPO/PPO/GRPO, without a
    second copy of the weights. Called like the model; other attributes are the model's."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad(), adapters_disabled(self.model):
            return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


# ----------------------------------------------------------------------------- PEFT adapter files


def is_adapter_key(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def _is_head_key(name: str, heads: Any) -> bool:
    return any(name.startswith(h + ".") for h in heads)


def adapter_state(state: dict[str, torch.Tensor], heads: Any = ()) -> dict[str, torch.Tensor]:
    """The adapter tensors (and those of the fully trained `heads`) of a model state dict, under llmctl's names."""
    return {k: v for k, v in state.items() if is_adapter_key(k) or _is_head_key(k, heads)}


def peft_config(spec: dict[str, Any], targets: list[str], base: str | None) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": spec["r"],
        "lora_alpha": spec["alpha"],
        "lora_dropout": spec["dropout"],
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": list(spec.get("heads") or []) or None,
        "base_model_name_or_path": base,
    }


def lora_spec(cfg: LoraConfig, heads: Any = ()) -> dict[str, Any]:
    """What a LoRA run records (manifest and checkpoint config.json) besides its base; `heads` are
    modules trained in full beside the adapters (PPO's value head) and saved with them."""
    spec = {"r": cfg.r, "alpha": cfg.scale_alpha, "dropout": cfg.dropout, "targets": cfg.target_list()}
    return {**spec, "heads": list(heads)} if heads else spec


def save_adapter(path: str | Path, state: dict[str, torch.Tensor], spec: dict[str, Any]) -> None:
    """Write PATH/adapter_model.safetensors (PEFT key names) and PATH/adapter_config.json from a model
    state dict (its non-adapter tensors are ignored) and a `lora_spec` (+ "base": {"path": ...})."""
    path = Path(path)
    heads = spec.get("heads") or ()
    ad = adapter_state(state, heads)
    if not any(is_adapter_key(k) for k in ad):
        raise UsageError("no LoRA adapter weights to save")
    tensors = {
        (PEFT_PREFIX if is_adapter_key(k) else HEAD_PREFIX) + k: v.detach().to("cpu").contiguous()
        for k, v in ad.items()
    }
    save_file(tensors, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    os.chmod(path / ADAPTER_WEIGHTS, fs.default_file_mode())
    targets = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in ad if is_adapter_key(k)})
    base = (spec.get("base") or {}).get("path")
    (path / ADAPTER_CONFIG).write_text(json.dumps(peft_config(spec, targets, base), indent=2) + "\n")


def read_adapter(path: str | Path) -> dict[str, torch.Tensor]:
    """The adapter (and trained head) tensors of PATH/adapter_model.safetensors under llmctl's names."""
    state = load_file(str(Path(path) / ADAPTER_WEIGHTS))
    out = {}
    for k, v in state.items():
        if k.startswith(PEFT_PREFIX) and is_adapter_key(k):
            out[k[len(PEFT_PREFIX) :]] = v
        elif k.startswith(HEAD_PREFIX) and not k.startswith(PEFT_PREFIX):
            out[k[len(HEAD_PREFIX) :]] = v
        else:
            raise UsageError(f"{path}: {ADAPTER_WEIGHTS} has a key PEFT's LoRA format does not use: {k}")
    return out


def load_adapter(model: nn.Module, path: str | Path, spec: dict[str, Any]) -> nn.Module:
    """Apply the adapters of PATH (a LoRA checkpoint or PEFT adapter dir) to `model` and load their weights;
    a trained head the model lacks (a PPO run's value head, loaded as a language model) is left out."""
    cfg = LoraConfig(r=spec["r"], alpha=spec["alpha"], dropout=spec["dropout"], targets=",".join(spec["targets"]))
    apply_lora(model, cfg)
    names = set(model.state_dict())
    state = {k: v for k, v in read_adapter(path).items() if is_adapter_key(k) or k in names}
    heads = spec.get("heads") or ()
    own = {k for k in names if is_adapter_key(k) or _is_head_key(k, heads)}
    if set(state) != own:
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        raise UsageError(
            f"{path}: adapter does not match the model (missing {missing[:2]}, unexpected {unexpected[:2]})"
        )
    model.load_state_dict(state, strict=False)
    return model


def trainable_summary(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train, sum(p.numel() for p in model.parameters())
