"""Stage configs: plain dataclasses, loaded from YAML or TOML, overridden by flags.

Precedence, lowest first: the dataclass defaults, the `--config` file, `--set key.sub=value`
pairs, then the stage's own flags. The resolved config is what goes into the manifest.

Fields marked `runtime()` (worker counts, progress display) change how a stage runs but not
what it writes, so they are left out of the config fingerprint: a re-run with another worker
count resumes instead of refusing.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from llmctl.errors import UsageError

T = TypeVar("T")


def runtime(default: Any = None, **kwargs: Any) -> Any:
    """A config field that does not change a stage's output (left out of the fingerprint)."""
    return dataclasses.field(default=default, metadata={"runtime": True}, **kwargs)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"cannot parse config {p}: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config {p} must be a mapping of option names to values")
    return data


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, where: str, base: Any = None) -> Any:
    """Convert a YAML/TOML/flag value to the annotated type, with a clear error.

    A mapping for a nested section is applied on top of `base`, the section's default in its
    parent (a stage's own `train` defaults, say), not on top of the section class's defaults.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise UsageError(f"config {where}: expected a mapping, got {value!r}")
        return from_dict(hint, value, prefix=where + ".", base=base if isinstance(base, hint) else None)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where, base) if len(inner) == 1 else value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"config {where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        out = [_coerce(v, item, where) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict or hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"config {where}: expected true/false, got {value!r}")
    if hint in (int, float, str):
        try:
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(value)
        except (TypeError, ValueError):
            raise UsageError(f"config {where}: expected {hint.__name__}, got {value!r}") from None
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "", base: T | None = None) -> T:
    """Build a dataclass from a (possibly partial, possibly nested) dict; unknown keys are errors.

    Keys not in `data` keep their value in `base` when given, else the class default; a nested
    section given in part starts from its default in `cls` (`SFTConfig.train`, not `TrainConfig()`).
    """
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UsageError(
            f"unknown config option {prefix}{unknown[0]}; valid options: "
            + ", ".join(prefix + n for n in sorted(fields))
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            nested = dataclasses.is_dataclass(hints[name])
            default = (getattr(base, name) if base is not None else _field_default(f)) if nested else None
            kwargs[name] = _coerce(data[name], hints[name], prefix + name, default)
        elif base is not None:
            kwargs[name] = getattr(base, name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able data (nested dataclasses become dicts)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def output_fields(cfg: Any) -> dict[str, Any]:
    """The config minus runtime-only fields: what the output depends on."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("runtime"):
            continue
        v = getattr(cfg, f.name)
        out[f.name] = output_fields(v) if dataclasses.is_dataclass(v) else v
    return json.loads(json.dumps(out, default=str))


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = value


def parse_set(pairs: list[str] | None) -> dict[str, Any]:
    """Parse `--set a.b=value` pairs; values are read as YAML scalars (3, 0.5, true, [a, b])."""
    data: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(data, key.strip(), value)
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `over` into a copy of `base`."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load(
    cls: type[T],
    config_file: str | Path | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> T:
    """Resolve a stage config: defaults < base < config file < --set pairs < flags (None = not given).

    `flags` and `base` (a named recipe's keys) may be dotted (`"c4.min_words_per_line"`) to reach nested sections.
    """
    data: dict[str, Any] = {}
    for key, value in (base or {}).items():
        _set_dotted(data, key, value)
    data = merge(data, read_config_file(config_file) if config_file else {})
    data = merge(data, parse_set(sets))
    for key, value in (flags or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
    return from_dict(cls, data)
