"""The report's per-step statistics of a filter output: its `_stats.json` (llmctl.data.filter.step_stats).

For each step, in the order it ran: documents in and out, documents removed, seconds spent
(summed over tasks and workers), and for each drop reason its documents and bytes. Every number
is the file's, unchanged; a filter output without the file (written by an older llmctl) has no
section.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmctl.report.html import esc, table

STATS_FILE = "_stats.json"  # llmctl.data.filter.STATS_FILE (the report reads files, not the data package)


def filter_stats_section(name: str, stage_dir: Path) -> str:
    """HTML of the section (empty when `stage_dir` has no readable _stats.json)."""
    path = stage_dir / STATS_FILE
    try:
        stats = json.loads(path.read_text())
        steps = stats["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    rows = [
        [s["step"], s["docs_in"], s["docs_out"], s["docs_in"] - s["docs_out"], f"{s['seconds']:.3f}"] for s in steps
    ]
    step_table = table(["step", "docs in", "docs out", "removed", "seconds"], rows, classes={4: "num"})
    reasons = [
        [s["step"], reason, r.get("docs", 0), r.get("bytes", 0)]
        for s in steps
        for reason, r in (s.get("reasons") or {}).items()
    ]
    reason_table = table(["step", "reason", "documents", "bytes"], reasons) if reasons else ""
    read, kept = stats.get("read", {}), stats.get("kept", {})
    total = (
        f'<p class="muted">{read.get("docs", 0):,} documents read ({read.get("bytes", 0):,} bytes), '
        f"{kept.get('docs', 0):,} kept ({kept.get('bytes', 0):,} bytes); seconds are summed over tasks "
        f"and workers (<code>{esc(name)}/{STATS_FILE}</code>).</p>"
    )
    return f"<h2>Filter steps ({esc(name)})</h2>{step_table}{reason_table}{total}"
