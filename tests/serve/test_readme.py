"""README.md's "Serve and chat" examples (curl and the openai client), run against a live server."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from serve_helpers import live_server

README = Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    md = README.read_text(encoding="utf-8")
    start = md.index("## Serve and chat")
    return md[start : md.index("\n## ", start + 1)]


def test_readme_curl_and_openai_examples(checkpoint):
    sec = section()
    bash = sec.split("```bash\n", 1)[1].split("```", 1)[0]
    curl = re.search(r"^curl .*?(?=\n\S)", bash, flags=re.S | re.M).group(0).replace("\\\n", " ")
    py = sec.split("```python\n", 1)[1].split("```", 1)[0]
    with live_server(checkpoint, name="sft") as (url, _):
        if shutil.which("curl"):
            args = [a.replace("http://127.0.0.1:8000", url) for a in shlex.split(curl)]
            out = json.loads(subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout)
            assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(py.replace("http://127.0.0.1:8000", url), {})
        assert buf.getvalue()
    assert "llmctl serve out/demo/sft" in sec and "local-completions" in sec
