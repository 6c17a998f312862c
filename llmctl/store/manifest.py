"""`_manifest.json`: the record every llmctl output (dataset, tokenizer, checkpoint, training run,
export, quality model) ends with, written last and atomically, so it is also the completion marker.

Every manifest has `stage`, `llmctl_version`, `config`, `inputs` (the lineage of what was read),
`stats` and `timings.finished` (UTC, when it was written), plus what its kind of output adds.
Manifests written before this layout carry their time stamp as `finished` (training runs) or
`created` (checkpoints, exports); `finished_at` reads every form.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from llmctl import __version__
from llmctl.store import fs

MANIFEST = "_manifest.json"


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_manifest(directory: str | fs.AnyPath, body: dict[str, Any]) -> dict[str, Any]:
    """Write DIRECTORY/_manifest.json atomically; returns what was written.

    `body` names the `stage` and holds what the output records; `config`, `inputs` and `stats`
    default to empty, `llmctl_version` is set, and `timings` gets `finished` (now) beside the
    timings `body` gives.
    """
    if not body.get("stage"):
        raise ValueError("a manifest names its stage")
    out = {"config": {}, "inputs": [], "stats": {}, **body, "llmctl_version": __version__}
    out["timings"] = {**(body.get("timings") or {}), "finished": now_iso()}
    fs.atomic_write_json(fs.to_path(directory) / MANIFEST, out)
    return out


def finished_at(manifest: dict[str, Any]) -> str | None:
    """When the output was finished (ISO 8601, UTC), from any manifest llmctl has written; None if it has no time."""
    timings = manifest.get("timings")
    stamp = timings.get("finished") if isinstance(timings, dict) else None
    stamp = stamp or manifest.get("finished") or manifest.get("created")
    return stamp if isinstance(stamp, str) else None
