"""`llmctl` command line: one Typer app; each stage's commands live in their own module here.

The CLI only parses arguments, loads configs and shows progress; the work is done by plain
functions in the stage modules, which tests and notebooks call directly.
"""

from __future__ import annotations

import os
import sys

# Each import registers that module's commands on `app`.
from llmctl.cli import align as _align  # noqa: E402,F401
from llmctl.cli import evaluate as _evaluate  # noqa: E402,F401
from llmctl.cli import filter as _filter  # noqa: E402,F401
from llmctl.cli import mix as _mix  # noqa: E402,F401
from llmctl.cli import pipeline as _pipeline  # noqa: E402,F401
from llmctl.cli import plan as _plan  # noqa: E402,F401
from llmctl.cli import quality as _quality  # noqa: E402,F401
from llmctl.cli import rl as _rl  # noqa: E402,F401
from llmctl.cli import serve as _serve  # noqa: E402,F401
from llmctl.cli import sweep as _sweep  # noqa: E402,F401
from llmctl.cli import tokenize as _tokenize  # noqa: E402,F401
from llmctl.cli import train as _train  # noqa: E402,F401
from llmctl.cli.app import app
from llmctl.errors import Interrupted, TaskFailed, UsageError


def main() -> None:
    """Console-script entry point: a user error is one line on stderr and exit code 2."""
    try:
        rv = app(standalone_mode=False)
        # without standalone mode, Typer *returns* the code of an Exit, and turns Ctrl-C into Exit(130)
        if rv == 130:
            raise KeyboardInterrupt
        if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
            sys.exit(rv)
    except UsageError as e:
        print(f"llmctl: error: {e}", file=sys.stderr)
        sys.exit(2)
    except TaskFailed as e:
        print(f"llmctl: failed: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        msg = Interrupted.last_message or "interrupted (finished shards are kept; re-run the same command to resume)"
        print(f"llmctl: {msg}", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # the filesystem said no (permissions, a read-only mount, a full disk): one line
        if os.environ.get("LLMCTL_TRACEBACK"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"llmctl: error: {where}{e.strerror or e} (LLMCTL_TRACEBACK=1 shows where)", file=sys.stderr)
        sys.exit(2)
    except SystemExit:
        raise
    except Exception as e:  # the parser's own errors: unknown option, bad value, missing argument
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # ClickException (Typer ships its own click)
            e.show()
            sys.exit(e.exit_code)
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise


__all__ = ["app", "main"]
