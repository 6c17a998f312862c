"""User-facing errors.

`UsageError` is what a user can fix (a missing file, a Parquet file without the needed column,
a config key that does not exist). The CLI prints its message on one line and exits non-zero,
without a traceback. `assert` is kept for internal invariants only.
"""


class UsageError(ValueError):
    """An input or option the user can fix; printed as a one-line error by the CLI."""


class TaskFailed(RuntimeError):
    """Some shards failed on every attempt; the others' output is complete and a re-run resumes.

    Printed as one line by the CLI (exit code 1)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what it left behind ("the last checkpoint is ...: re-run to resume from it").

    Typer turns a KeyboardInterrupt into exit code 130 and drops the exception, so the latest
    message is also kept on the class for the CLI's one line."""

    last_message: str | None = None

    def __init__(self, message: str):
        super().__init__(message)
        Interrupted.last_message = message
