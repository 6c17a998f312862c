"""Checkpoint directories: weights in safetensors, config as JSON, the tokenizer beside them.

Layout of a checkpoint directory::

    model.safetensors     the weights (a tied lm_head is stored once, as embed_tokens)
    adapter_model.safetensors, adapter_config.json
                          instead of model.safetensors in a LoRA run: the adapters only, in PEFT's
                          format (llmctl.model.lora); config.json's "lora" names the base checkpoint
    config.json           ModelConfig fields + {"format": "llmctl"}
    tokenizer/            a copy of the tokenizer directory the model was trained with
    train_state.pt        (resumable checkpoints only) optimizer, schedule step, RNG, data position
    _manifest.json        stage, config, inputs (lineage), stats, and the size and SHA-256 of the
                          weights, config and train state; written last = completion marker

Every reader of a checkpoint's weights or train state goes through `verified`, which checks the
file's SHA-256 against the manifest first (LLMCTL_VERIFY=0 skips it, as for dataset shards).

Nothing is pickled: `train_state.pt` holds only tensors and plain types and is read back with
`torch.load(weights_only=True)`, which refuses anything else. A checkpoint is written into a
hidden temporary directory and renamed into place, so a run killed mid-save leaves the previous
checkpoint intact (and the temporary directory is removed when the run starts again, see
llmctl.train.run_dir); a write that fails (a full disk) is one line, `CheckpointWriteError`.
Files get the mode of every other file llmctl writes: 0666 less the umask.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmctl.errors import UsageError
from llmctl.model import hf_import
from llmctl.model import lora as L
from llmctl.model.transformer import ModelConfig, Transformer
from llmctl.store import fs
from llmctl.store.integrity import file_sha256, fingerprint_file, verify_checksums
from llmctl.store.manifest import MANIFEST, write_manifest
from llmctl.tokenizer.spm import Tokenizer

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER_DIR = "tokenizer"
TRAIN_STATE = "train_state.pt"
CHECKSUMS = "checksums"  # manifest key: {file name: {"bytes", "sha256"}} of the files in CHECKED
CHECKED = (WEIGHTS, CONFIG, TRAIN_STATE, L.ADAPTER_WEIGHTS, L.ADAPTER_CONFIG)


def tokenizer_vocab_size(tokenizer_dir: str | Path) -> int:
    return Tokenizer.load(tokenizer_dir).vocab_size


def check_vocab(model_cfg: ModelConfig, tokenizer_dir: str | Path, where: str | Path = "checkpoint") -> None:
    """One-line UsageError when a tokenizer does not fit a model's embedding table."""
    n = tokenizer_vocab_size(tokenizer_dir)
    if n != model_cfg.vocab_size:
        raise UsageError(
            f"tokenizer {tokenizer_dir} has {n} tokens but {where} was trained with vocab_size {model_cfg.vocab_size}; "
            "use the tokenizer the model was trained with"
        )


def _weights_for_saving(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    out = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def save_checkpoint(
    path: str | Path,
    model: Transformer | dict[str, torch.Tensor],
    model_cfg: ModelConfig,
    tokenizer_dir: str | Path | None = None,
    train_state: dict[str, Any] | None = None,
    manifest: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically; `model` may be a module or a full state dict.

    With `manifest["lora"]` (a LoRA run's spec, see llmctl.model.lora.lora_spec, plus its "base"
    lineage) only the adapter tensors are written, as a PEFT adapter directory.

    A failed write (a full disk, a quota) removes its temporary directory and is one line naming
    the cause; a checkpoint already at `path`, and every other one, is left as it was."""
    path = Path(path)
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        spec = (manifest or {}).get("lora")  # a LoRA run: its adapters only
        if spec:
            L.save_adapter(tmp, state, spec)
        else:
            write_weights(_weights_for_saving(state, model_cfg), tmp / WEIGHTS)
        extra = {"lora": spec} if spec else {}
        (tmp / CONFIG).write_text(json.dumps({"format": "llmctl", **model_cfg.to_dict(), **extra}, indent=2) + "\n")
        if tokenizer_dir is not None and hf_import.is_hf_dir(tokenizer_dir):  # an imported model's own dir
            hf_import.copy_tokenizer_files(tokenizer_dir, tmp / TOKENIZER_DIR)
        elif tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / TOKENIZER_DIR)
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
        sums = {
            n: {"bytes": (tmp / n).stat().st_size, "sha256": file_sha256(tmp / n)}
            for n in CHECKED
            if (tmp / n).is_file()
        }
        write_manifest(tmp, {"stage": "checkpoint", "model": model_cfg.to_dict(), **(manifest or {}), CHECKSUMS: sums})
    except (OSError, RuntimeError, SafetensorError) as e:  # torch.save reports ENOSPC as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(
            f"cannot write checkpoint {path} ({_write_error(e, path)}); the checkpoints "
            "before it are intact: free some space and re-run the same command to resume"
        ) from None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    return path


def verified(path: str | Path, name: str) -> Path:
    """`path/name` once its bytes match the SHA-256 the checkpoint's manifest records (LLMCTL_VERIFY=0
    skips the check, as for dataset shards); a one-line `UsageError` naming the file when they do
    not. A checkpoint written before checksums were recorded is read with a notice."""
    f = Path(path) / name
    try:
        sums = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8")).get(CHECKSUMS)
    except (OSError, ValueError):
        sums = None
    rec = sums.get(name) if isinstance(sums, dict) else None
    if not isinstance(rec, dict):
        if sums is None and str(path) not in _unchecked:
            _unchecked.add(str(path))
            print(
                f"llmctl: {path}: this checkpoint records no checksums; its files are read unverified", file=sys.stderr
            )
        return f
    if not verify_checksums():
        return f
    try:
        ok = f.stat().st_size == rec.get("bytes") and file_sha256(f) == rec.get("sha256")
    except OSError as e:
        raise UsageError(f"{f}: cannot read ({e.strerror})") from None
    if not ok:
        raise UsageError(
            f"{f}: does not match the SHA-256 in {Path(path) / MANIFEST} (corrupt or changed after it "
            "was written); use another checkpoint or re-run the training that made it"
        )
    return f


_unchecked: set[str] = set()  # checkpoints already reported as having no checksums


class CheckpointWriteError(UsageError):
    """A checkpoint could not be written (disk full, quota, permissions); earlier checkpoints are intact."""


def _write_error(e: BaseException, path: Path) -> str:
    """The cause of a failed write in a few words: the OS error if there is one, else the free space."""
    err = getattr(e, "errno", None)
    text = str(e)
    if err == errno.ENOSPC or "No space left" in text or "os error 28" in text or "StorageFull" in text:
        return "no space left on the device"
    if err == errno.EDQUOT or "quota" in text.lower():
        return "disk quota exceeded"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
        if free < 64 << 20:
            return f"the device is full: {free >> 20} MiB free"
    except OSError:
        pass
    return (text.strip().splitlines() or [type(e).__name__])[-1][:200]


def write_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """safetensors' `save_file`, with the file mode every other file gets (0666 less the umask;
    safetensors itself leaves 0600)."""
    save_file(state, str(path), metadata={"format": "pt"})
    os.chmod(path, fs.default_file_mode())


def weights_file(path: str | Path) -> Path:
    """The checkpoint's weights: model.safetensors, or a LoRA run's adapter_model.safetensors."""
    path = Path(path)
    return path / WEIGHTS if (path / WEIGHTS).is_file() else path / L.ADAPTER_WEIGHTS


def lora_of(path: str | Path) -> dict[str, Any] | None:
    """A LoRA checkpoint's spec (r, alpha, dropout, targets, base), else None."""
    f = Path(path) / CONFIG
    return json.loads(f.read_text()).get("lora") if f.is_file() else None


def read_model_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    if not (path / CONFIG).is_file() or not weights_file(path).is_file():
        raise UsageError(f"{path}: not an llmctl checkpoint (no {CONFIG} + {WEIGHTS})")
    data = json.loads((path / CONFIG).read_text())
    if data.get("format") != "llmctl":
        raise UsageError(f"{path}: {CONFIG} is not an llmctl model config")
    return ModelConfig.from_dict(data)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir itself, or a run dir's final checkpoint, or its latest step checkpoint."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such checkpoint directory")
    if weights_file(p).is_file():
        return p
    steps = sorted((p / "checkpoints").glob("step_*")) if (p / "checkpoints").is_dir() else []
    if steps:
        return steps[-1]
    raise UsageError(f"{p}: not an llmctl checkpoint or run directory (no {WEIGHTS})")


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    tokenizer_dir: str | Path | None = None,
) -> tuple[Transformer, ModelConfig, Path | None, dict[str, Any]]:
    """Load (model in eval mode, its config, its tokenizer dir, its manifest).

    `tokenizer_dir` overrides the checkpoint's own tokenizer copy; its vocabulary must match.
    A Hugging Face model directory (llmctl.model.hf_import) loads too, in fp32.
    """
    if hf_import.is_hf_dir(path):
        model, cfg, tok, manifest = hf_import.load_hf(path, device)
        if tokenizer_dir is not None:
            hf_import.check_tokenizer(tokenizer_dir, cfg)
            tok = Path(tokenizer_dir)
        return model, cfg, tok, manifest
    path = resolve_checkpoint(path)
    cfg = read_model_config(path)
    tok = Path(tokenizer_dir) if tokenizer_dir is not None else path / TOKENIZER_DIR
    if cfg.hf_arch is not None and tok.is_dir():  # an imported model: its own tokenizer.json
        hf_import.check_tokenizer(tok, cfg)
    elif tokenizer_dir is not None or tok.is_dir():
        check_vocab(cfg, tok, where=path)
    else:
        tok = None
    spec = lora_of(path)
    if spec:
        if "score_head" in (spec.get("heads") or []):
            raise UsageError(f"{path}: a reward model (LoRA run with a score head), not a language model")
        return load_lora_checkpoint(path, spec, device, tok)
    model = Transformer(cfg)
    state = load_file(str(verified(path, WEIGHTS)))
    state.pop("value_head.weight", None)  # `llmctl rl --algo ppo`'s value head: not part of the language model
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UsageError(
            f"{path}: weights do not match config.json (missing {missing[:2]}, unexpected {unexpected[:2]})"
        )
    manifest = json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).is_file() else {}
    return model.to(device).eval(), cfg, tok, manifest


def load_lora_checkpoint(
    path: Path, spec: dict[str, Any], device: str | torch.device = "cpu", tok: Path | None = None
) -> tuple[Transformer, ModelConfig, Path | None, dict[str, Any]]:
    """A LoRA checkpoint as a language model: its base (fingerprint checked) with the adapters applied;
    trained heads (value, score) are left out."""
    base = spec["base"]
    bpath = Path(base["path"])
    if not bpath.is_dir() or fingerprint_file(weights_file(bpath)) != base["fingerprint"]:
        raise UsageError(f"{path}: its LoRA base {bpath} is missing or its weights changed since training")
    model, cfg, _, _ = load_checkpoint(bpath)
    if L.has_lora(model):  # a base that is itself a LoRA run: its adapters are part of the base
        L.merge_lora(model)
    L.load_adapter(model, path, spec)
    manifest = json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).is_file() else {}
    return model.to(device).eval(), cfg, tok, manifest


def load_train_state(path: str | Path) -> dict[str, Any]:
    """The resume state of a checkpoint (tensors and plain types only: weights_only=True)."""
    f = Path(path) / TRAIN_STATE
    if not f.is_file():
        raise UsageError(f"{path}: has no {TRAIN_STATE}; it cannot be resumed")
    return torch.load(verified(path, TRAIN_STATE), map_location="cpu", weights_only=True)
