"""A local Hugging Face model directory (Llama, Mistral, Qwen2/2.5, Qwen3) as llmctl's Transformer.

llmctl's parameter names are Hugging Face's without the `model.` prefix, so loading is a rename:
config.json is parsed here (transformers is not needed), the weights are streamed from
`model.safetensors` or the shards of `model.safetensors.index.json` into a model built on the meta
device without initialisers and then allocated uninitialised: each tensor is read from its file
straight into its parameter's memory (through a one-tensor buffer when the file's dtype differs from
the requested one), never memory-mapped, so peak memory is the model plus its largest tensor.
Everything is checked before a tensor is read; anything outside what llmctl computes exactly
(another architecture, an activation other than SiLU, a rope type other than linear/llama3/yarn,
Qwen2's per-layer sliding window, weights or a tokenizer that do not fit the config) is a one-line
UsageError naming what is supported.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import torch

from llmctl.errors import UsageError
from llmctl.model.transformer import ROPE_TYPES, ModelConfig, Transformer
from llmctl.store.integrity import fingerprint_file

# architecture class -> model_type
SUPPORTED = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def is_hf_dir(path: str | Path) -> bool:
    """A Hugging Face model directory (a config.json not written by llmctl)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") != "llmctl"
    except json.JSONDecodeError:
        return False


def read_hf_config(path: str | Path) -> dict[str, Any]:
    f = Path(path) / "config.json"
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{f}: cannot read ({e})") from None


def hf_model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of a supported Hugging Face model directory (one-line error otherwise)."""
    hf = read_hf_config(path)
    arch = (hf.get("architectures") or [None])[0]
    if arch not in SUPPORTED:
        raise UsageError(f"{path}: unsupported architecture {arch}; supported: {', '.join(SUPPORTED)}")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UsageError(f"{path}: hidden_act {act!r} is not supported (only silu)")
    if hf.get("use_sliding_window"):
        raise UsageError(f"{path}: use_sliding_window is true; Qwen2's sliding-window attention is not supported")
    rp = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = rp.get("rope_theta") or hf.get("rope_theta") or 10000.0
    scaling = {k: v for k, v in rp.items() if k not in ("rope_theta", "type")}
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise UsageError(f"{path}: rope_type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise UsageError(f"{path}: partial_rotary_factor != 1 is not supported")
    scaling["rope_type"] = kind
    family = SUPPORTED[arch]
    bias = bool(hf.get("attention_bias", False)) and family in ("llama", "qwen3")  # Mistral has none
    heads = hf["num_attention_heads"]
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            n_layer=hf["num_hidden_layers"],
            n_head=heads,
            n_kv_head=hf.get("num_key_value_heads") or heads,
            d_model=hf["hidden_size"],
            d_ff=hf["intermediate_size"],
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            max_seq_len=hf.get("max_position_embeddings", 2048),
            rope_base=float(theta),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", 0.02)),
            qkv_bias=family == "qwen2" or bias,
            o_bias=bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=family == "qwen3",
            rope_scaling=None if kind == "default" else scaling,
            sliding_window=hf.get("sliding_window") if family == "mistral" else None,
            hf_arch=arch,
            hf_config=hf,
        )
    except KeyError as e:
        raise UsageError(f"{path}: config.json has no {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"{path}: config.json does not describe a supported model ({e})") from None


def weight_map(path: str | Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    p = Path(path)
    if (p / INDEX).is_file():
        try:
            wm = json.loads((p / INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise UsageError(f"{p / INDEX}: not a safetensors index ({e})") from None
        missing = sorted({f for f in wm.values() if not (p / f).is_file()})
        if missing:
            raise UsageError(f"{p}: shard {missing[0]} named in {INDEX} is missing")
        return {k: p / f for k, f in wm.items()}
    if (p / WEIGHTS).is_file():
        return {k: p / WEIGHTS for k in read_header(p / WEIGHTS)[0]}
    raise UsageError(f"{p}: no safetensors weights ({WEIGHTS} or {INDEX}; .bin is not supported)")


def read_header(f: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """A safetensors file's tensors ({name: {dtype, shape, data_offsets}}) and the byte where their data starts."""
    try:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100_000_000:
                raise ValueError(f"a header of {n} bytes")
            head = json.loads(fh.read(n))
        size = f.stat().st_size
        head.pop("__metadata__", None)
        for k, v in head.items():
            a, b = v["data_offsets"]
            if not 0 <= a <= b <= size - 8 - n:
                raise ValueError(f"{k}'s data lies outside the file")
        return head, 8 + n
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise UsageError(f"{f}: not a readable safetensors file ({e})") from None


def _shapes(files: dict[str, Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in sorted(set(files.values())):
        head, _ = read_header(f)
        for k, v in head.items():
            if files.get(k) == f:
                out[k] = (tuple(v["shape"]), v["dtype"])
    missing = sorted(set(files) - set(out))
    if missing:
        raise UsageError(f"{files[missing[0]]}: has no tensor {missing[0]} (named in {INDEX})")
    return out


def _read_into(fh: Any, start: int, info: dict[str, Any], dst: torch.Tensor, where: Path) -> None:
    """Read one tensor's bytes from an open safetensors file into `dst` (converting the dtype if it differs)."""
    a, b = info["data_offsets"]
    src_dtype = _DTYPES[info["dtype"]]
    direct = dst.dtype == src_dtype and dst.device.type == "cpu" and dst.is_contiguous()
    buf = dst if direct else torch.empty(tuple(info["shape"]), dtype=src_dtype)
    if buf.numel() * buf.element_size() != b - a:
        raise UsageError(f"{where}: {b - a} bytes of data for a {info['dtype']} tensor of shape {info['shape']}")
    view = memoryview(buf.view(-1).view(torch.uint8).numpy())
    fh.seek(start + a)
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            raise UsageError(f"{where}: the file ends inside a tensor")
        got += n
    if not direct:
        dst.copy_(buf)


def _llmctl_name(key: str) -> str | None:
    """The llmctl parameter a Hugging Face tensor name loads into (None = not a parameter)."""
    if key.endswith("rotary_emb.inv_freq"):
        return None
    return key[len("model.") :] if key.startswith("model.") else key


def check_tokenizer(path: str | Path, cfg: ModelConfig) -> None:
    """One-line error when the directory's tokenizer.json has ids beyond the embedding table
    (fewer ids is fine: Qwen2.5 pads its table to a multiple of 128)."""
    f = Path(path) / "tokenizer.json"
    if not f.is_file():
        return
    from tokenizers import Tokenizer  # tokenizers: only for Hugging Face dirs

    vocab = Tokenizer.from_file(str(f)).get_vocab(with_added_tokens=True)
    top = max(vocab.values()) + 1 if vocab else 0
    if top > cfg.vocab_size:
        raise UsageError(
            f"{path}: tokenizer.json has ids up to {top - 1} but the model's embeddings have {cfg.vocab_size} rows"
        )


_INIT_OPS = frozenset({"normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "ones_", "zeros_", "fill_", "zero_"})


class _SkipMetaInit(torch.overrides.TorchFunctionMode):
    """Initialisers on meta tensors do nothing (every value is read from the files afterwards). Running
    them would import torch's meta-tensor kernels, ~800 Python modules and ~70 MB, on the first load."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in _INIT_OPS:
            t = args[0] if args else kwargs.get("tensor")
            if isinstance(t, torch.Tensor) and t.is_meta:
                return t
        return func(*args, **kwargs)


def _materialize(model: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Replace each meta parameter and buffer with an uninitialised one of `dtype` on `device`, in place;
    a tensor shared by two modules (tied embeddings) stays shared. (Module.to_empty would do the same
    through empty_like, whose first call on a meta tensor imports torch's symbolic-shape machinery.)"""
    made: dict[int, torch.Tensor] = {}
    for mod in model.modules():
        for table in (mod._parameters, mod._buffers):
            for name, t in list(table.items()):
                if t is None:
                    continue
                if table is mod._buffers and name in mod._non_persistent_buffers_set:
                    raise RuntimeError(f"{type(mod).__name__}.{name}: a buffer the weight files cannot fill")
                if id(t) not in made:
                    new = torch.empty(tuple(t.shape), dtype=dtype if t.is_floating_point() else t.dtype, device=device)
                    made[id(t)] = torch.nn.Parameter(new, t.requires_grad) if table is mod._parameters else new
                table[name] = made[id(t)]


def load_hf(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = torch.float32
) -> tuple[Transformer, ModelConfig, Path | None, dict[str, Any]]:
    """(model in eval mode, its config, its tokenizer dir (the directory itself, or None), a manifest
    naming the source files): the same tuple as `llmctl.model.checkpoint.load_checkpoint`.
    `dtype` "auto" (or None) keeps the file's dtype."""
    p = Path(path)
    cfg = hf_model_config(p)
    files = weight_map(p)
    shapes = _shapes(files)
    with torch.device("meta"), _SkipMetaInit():
        model = Transformer(cfg)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        want.pop("lm_head.weight")
    names = {k: _llmctl_name(k) for k in shapes}
    if cfg.tie_embeddings:
        names = {k: n for k, n in names.items() if n != "lm_head.weight"}
    have = {n: shapes[k][0] for k, n in names.items() if n is not None}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    bad = [f"{n} {have[n]} != {want[n]}" for n in sorted(set(want) & set(have)) if have[n] != want[n]]
    if missing or unexpected or bad:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else ""]
        parts.append(f"shape {bad[0]}" if bad else "")
        raise UsageError(f"{p}: weights do not match config.json ({', '.join(x for x in parts if x)})")
    odd = sorted({d for _, d in shapes.values() if d not in _DTYPES})
    if odd:
        raise UsageError(f"{p}: weights in {odd[0]}; supported: bf16, fp16, fp32")
    check_tokenizer(p, cfg)
    if dtype in (None, "auto"):
        file_dtypes = [_DTYPES[d] for _, d in shapes.values()]
        dtype = max(set(file_dtypes), key=file_dtypes.count)
    elif isinstance(dtype, str):
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    _materialize(model, dtype, torch.device(device))
    params = model.state_dict()
    by_file: dict[Path, list[str]] = {}
    for k, n in names.items():
        if n is not None:
            by_file.setdefault(files[k], []).append(k)
    with torch.no_grad():
        for f, keys in by_file.items():
            head, start = read_header(f)
            with open(f, "rb", buffering=0) as fh:
                for k in sorted(keys, key=lambda k: head[k]["data_offsets"][0]):  # sequential reads
                    _read_into(fh, start, head[k], params[names[k]], f)
    manifest = {
        "stage": "hf-model",
        "arch": cfg.hf_arch,
        "path": str(p.resolve()),
        "files": {
            f.name: fingerprint_file(f)
            for f in sorted(set(files.values())) + [p / n for n in ("config.json", INDEX, "tokenizer.json")]
            if f.is_file()
        },
    }
    tok = p if (p / "tokenizer.json").is_file() else None
    return model.eval(), cfg, tok, manifest


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    """Copy a Hugging Face directory's tokenizer and chat-template files (never its weights) into `dst`."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, dst / name)
