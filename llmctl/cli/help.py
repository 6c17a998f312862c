"""How `--help` reads: commands in pipeline order, plain metavars, one way of showing defaults.

Typer renders help from the click objects it builds; `LlmctlGroup` (the class of the app and of
every sub-app) polishes each command the first time it is looked up:

- commands are listed in the order a run uses them (`ORDER`), not in the order modules register;
- docstrings are unwrapped, so rich wraps each paragraph to the terminal itself (a paragraph
  starting with `\\b` keeps its lines, as in click);
- metavars are plain words (`N`, `X`, `TEXT`, `PATH`, arguments by their upper-case name)
  instead of Typer's `<int>`, `<list[str]>`, `<bool>` and `{name}...`; flags show none;
- every default is shown as `[default: ...]`: an option whose Python default is None (so that
  `--config` and `--set` can set it) shows the stage config's real default, read from the same
  `llmctl.config.load` call the command makes (see `_config_defaults`), else the text of a
  `(default: ...)` note in its help, which is moved to that place.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from typer.core import TyperArgument, TyperGroup, TyperOption

# Pipeline order: data, tokens, pretraining and its tools, post-training, evaluation and export,
# then whole runs. Commands not named here follow in registration order.
ORDER = (
    "filter",
    "quality",
    "tokenize",
    "mix",
    "pretrain",
    "generate",
    "sft",
    "reward",
    "dpo",
    "rl",
    "eval",
    "export",
    "plot",
    "sweep",
    "data",
    "run",
    "report",
    # sub-commands
    "train",
    "encode",
    "inspect",
    "predict",
    "score",
    "import",
    "fit",
    "check",
)

_METAVAR = {int: "N", float: "X", str: "TEXT"}
_NAMED = {
    "--output": "PATH",
    "--config": "FILE",
    "--set": "KEY=VALUE",
    "--tokenizer": "DIR",
    "--from": "CKPT",
    "--ref": "CKPT",
    "--baseline": "MODEL",
    "--reward-model": "RM",
    "--quality-model": "DIR",
    "--against": "DIR",
    "--positive": "DIR",
    "--negative": "DIR",
    "--task": "TASK",
    "--ppl-data": "PATH",
    "--mc-data": "PATH",
    "--em-data": "PATH",
    "--prompts": "PATH",
    "--prefs-data": "PATH",
    "--items": "PATH",
    "--train-data": "PATH",
    "--only": "STAGE",
    "--source": "NAME=PATH[:W]",
    "--weight": "NAME=W",
    "--mix": "FILE",
    "--until": "STAGE",
    "--format": "FORMAT",
}
_DEFAULT_NOTE = re.compile(r"\s*\(default:?\s+([^()]*(?:\([^()]*\)[^()]*)*)\)")


def unwrap(text: str | None) -> str | None:
    """Join the lines of each paragraph (blank-line separated), so rich can wrap it."""
    if not text:
        return text
    paras = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(ln.strip() for ln in p.splitlines()) for p in paras)


def _default_text(value: Any) -> str | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class _Probe:
    """Stands in for one parameter's value while `_config_defaults` runs a command's body."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __bool__(self) -> bool:
        return True


class _Captured(Exception):
    def __init__(self, cls: type, flags: dict[str, Any]) -> None:
        self.cls, self.flags = cls, flags


def _config_defaults(cmd: Any) -> dict[str, Any]:
    """{parameter name: the stage's default} for a command that resolves its options with
    `llmctl.config.load(Config, config, set_, flags)`: the command's own function is called with a
    marker for each parameter, `load` records which config key each marker went to and stops the
    call, and the defaults are read from `load(Config)` itself, so the help shows what a run
    without the flag uses (a stage's own training defaults included). Only commands with
    `--config` are probed: they resolve their config before doing anything."""
    from llmctl import config as C  # yaml: kept out of --help

    fn = inspect.unwrap(cmd.callback) if cmd.callback else None
    if fn is None or not any(p.name == "config" for p in cmd.params):
        return {}
    real = C.load

    def capture(cls, config_file=None, sets=None, flags=None):
        raise _Captured(cls, dict(flags or {}))

    C.load = capture
    try:
        fn(**{p.name: _Probe(p.name) for p in cmd.params if p.name})
        return {}
    except _Captured as got:
        captured = got
    except Exception:  # noqa: BLE001 - help must render even if a command cannot be probed
        return {}
    finally:
        C.load = real
    cfg = real(captured.cls)
    found: dict[str, Any] = {}
    for key, value in captured.flags.items():
        if isinstance(value, _Probe) and value.name not in found:
            node: Any = cfg
            for part in key.split("."):
                node = getattr(node, part, None)
            found[value.name] = node
    return found


def _polish_param(p: Any, cmd: Any) -> None:
    if getattr(p, "_llmctl_polished", False):
        return
    p._llmctl_polished = True
    p.help = unwrap(p.help)
    if isinstance(p, TyperArgument):
        p.metavar = (p.name or "arg").upper() + ("..." if p.nargs != 1 else "")
        p.display_type_rich = lambda ctx: None  # the name column says it already
        p.get_usage_pieces = lambda ctx, n=p.metavar, req=p.required: [n if req else f"[{n}]"]
        return
    if not isinstance(p, TyperOption):
        return
    flag = bool(getattr(p, "is_flag", False) or getattr(p, "count", False))
    if flag:
        p.metavar = ""  # a flag takes no value
    elif p.metavar is None:
        p.metavar = next((_NAMED[o] for o in p.opts if o in _NAMED), None) or _METAVAR.get(_base_type(p), "TEXT")
    p._get_number_range_help_str = lambda: None  # "[x>=1]": the help says what a value means
    note = _DEFAULT_NOTE.search(p.help or "")
    text = note.group(1).strip() if note else None
    if note:
        p.help = re.sub(r"\s+([.;,])", r"\1", p.help[: note.start()] + p.help[note.end() :]).strip()
    if p.default is not None or (flag and not p.secondary_opts):
        return  # Typer shows it; a plain flag is off unless given
    state: dict[str, Any] = {}

    def shown(ctx: Any) -> Any:  # computed when a help page first needs it
        if "v" not in state:
            value = _defaults(cmd).get(p.name)
            if flag and isinstance(value, bool):  # --dedup/--no-dedup: the one in effect, as Typer shows it
                value = (p.opts if value else p.secondary_opts)[0].lstrip("-")
            state["v"] = _default_text(value) or text
        return state["v"]

    p._extract_default_help_str = shown
    p._get_default_string = lambda ctx, show_default_is_str, default_value: str(default_value)


def _base_type(p: Any) -> Any:
    """int for Optional[int], str for list[str], ..."""
    kind = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    for _ in range(2):
        args = [a for a in getattr(kind, "__args__", ()) if a is not type(None)]
        if not args:
            break
        kind = args[0]
    return kind


def _defaults(cmd: Any) -> dict[str, Any]:
    if not hasattr(cmd, "_llmctl_defaults"):
        cmd._llmctl_defaults = _config_defaults(cmd)
    return cmd._llmctl_defaults


def _polishing(get_params: Any, cmd: Any) -> Any:
    def wrapped(ctx: Any) -> list[Any]:
        params = get_params(ctx)
        for p in params:  # its own parameters and the --help option click adds
            _polish_param(p, cmd)
        return params

    return wrapped


def polish(cmd: Any) -> Any:
    """Plain metavars, unwrapped help and defaults shown one way, for `cmd` (once)."""
    if cmd is None or getattr(cmd, "_llmctl_polished", False):
        return cmd
    cmd._llmctl_polished = True
    cmd.help = unwrap(cmd.help)
    if getattr(cmd, "short_help", None):
        cmd.short_help = unwrap(cmd.short_help)
    if not isinstance(cmd, TyperGroup):  # a group polishes itself (LlmctlGroup.get_params)
        cmd.get_params = _polishing(cmd.get_params, cmd)
    return cmd


class LlmctlGroup(TyperGroup):
    """The app's and every sub-app's click group: pipeline order, polished commands."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = list(super().list_commands(ctx))
        rank = {n: i for i, n in enumerate(ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(ORDER)), names.index(n)))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return polish(super().get_command(ctx, cmd_name))

    def get_params(self, ctx: Any) -> list[Any]:
        self.help = unwrap(self.help)
        return _polishing(super().get_params, self)(ctx)
