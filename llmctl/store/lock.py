"""One writer per output: an exclusive lock file beside every output a stage writes.

`with writer_lock(out):` (or the `@exclusive_output("out")` decorator on a stage function) takes
`PARENT/.NAME.lock` for the output `PARENT/NAME` before anything is written and removes it when
the stage ends, however it ends. The file holds the holder's host, pid, start time and command
line, so a second run into the same output stops at once with one line naming the holder (exit 2
from the CLI) and touches nothing. The lock sits beside the output, not in it, so a stage may
replace its whole output directory (`--overwrite`, the tokenizer's rename into place) without
dropping its own lock, and the output holds nothing but the data contract's files.

How it is taken:
- Local paths: `flock` on the lock file (released by the kernel when the process dies, also on
  SIGKILL; the file is opened without following a symlink and used only when it is a regular
  file, so a planted link never truncates its target), then a check that the locked file is
  still the one at the path (a holder removes it on release). A lock file left by a killed run is taken over with a notice; one naming a live
  process is respected; one written on another host is not second-guessed (it names its host
  and how to remove it).
- fsspec URIs: the lock object is created with exclusive create (`open(..., "xb")`: S3's
  If-None-Match, fsspec's memory and local filesystems). A stale one from a dead process on this
  host is taken over. A store without exclusive create gets a check-then-write lock, which is
  advisory only (a notice says so).

The lock is re-entrant within a process (a stage function that calls another one on the same
output), and held by the calling process only: worker processes and Ray tasks write under it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import functools
import inspect
import json
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmctl.errors import UsageError
from llmctl.store import fs

_held: dict[str, list[Any]] = {}  # lock path -> [OutputLock, depth]
_mutex = threading.Lock()


class OutputLocked(UsageError):
    """Another run is writing this output."""


def lock_path(output: Any) -> Any:
    """Where the lock of `output` lives: PARENT/.NAME.lock (local outputs: of the resolved path)."""
    p = fs.to_path(output)
    if fs.is_local(p):
        p = p.resolve()
    name = p.name
    if not name or name in (".", ".."):
        raise UsageError(f"{output}: cannot be an output (it has no name of its own)")
    return p.with_name(f".{name}.lock")


def _proc_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    now = _proc_start(pid)
    return not (start and now and now != start)


def holder_record() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _proc_start(os.getpid()),
        "started": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": _command(),
    }


def _command() -> str:
    """The holder's command line as a user would type it (`python -m llmctl ...` shows as `llmctl ...`)."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    if prog in ("__main__.py", "llmctl"):
        prog = "llmctl"
    return " ".join([prog, *sys.argv[1:]])[:200]


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("pid"), int) else None


def _describe(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "a process that is still starting"
    cmd = f": {rec['command']}" if rec.get("command") else ""
    return f"pid {rec['pid']} on {rec.get('host', '?')}, since {rec.get('started', '?')}{cmd}"


def _stale(rec: dict[str, Any] | None) -> bool:
    """A lock record of a process on this host that is gone (None: unreadable, i.e. not a holder)."""
    return rec is None or (rec.get("host") == socket.gethostname() and not _alive(rec["pid"], rec.get("pid_start")))


def _notice(message: str) -> None:
    print(f"llmctl: {message}", file=sys.stderr, flush=True)


class OutputLock:
    """The exclusive writer lock of one output; `acquire()` / `release()` (or use `writer_lock`)."""

    def __init__(self, output: Any):
        self.output = output
        self.path = lock_path(output)
        self._fd: int | None = None

    @property
    def key(self) -> str:
        return fs.display(self.path)

    def _locked(self, rec: dict[str, Any] | None) -> OutputLocked:
        return OutputLocked(
            f"{fs.display(self.output)}: another llmctl run is writing this output "
            f"({_describe(rec)}); wait for it to finish or stop it"
        )

    def _foreign(self, rec: dict[str, Any]) -> OutputLocked:
        return OutputLocked(
            f"{fs.display(self.output)}: locked by a run on another host ({_describe(rec)}); "
            f"if that run is gone, remove {self.key}"
        )

    # -- local files: flock
    def _acquire_local(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{self.path.parent}: cannot create the output's directory ({e.strerror})") from None
        import fcntl  # POSIX only: imported where a local lock is taken

        for _ in range(100):  # retried only when a holder removed the file between our open and flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise UsageError(
                        f"{self.key}: is a symlink; llmctl lock files are regular files: remove it"
                    ) from None
                raise UsageError(f"{fs.display(self.output)}: cannot write here ({e.strerror})") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise UsageError(f"{self.key}: is not a regular file; llmctl lock files are regular files: remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                rec = _parse(os.pread(fd, 4096, 0))
                for _ in range(50):  # the holder writes its record just after it locks: give it a moment
                    if rec is not None:
                        break
                    time.sleep(0.02)
                    rec = _parse(os.pread(fd, 4096, 0))
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._locked(rec) from None
                raise UsageError(f"{self.key}: cannot lock ({e.strerror})") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - a holder that keeps re-creating the file
            raise UsageError(f"{self.key}: could not take the lock")
        old = os.pread(fd, 4096, 0)
        if old:
            rec = _parse(old)
            if rec is not None and rec.get("host") != socket.gethostname():
                os.close(fd)
                raise self._foreign(rec)
            if rec is not None and _alive(rec["pid"], rec.get("pid_start")):
                os.close(fd)  # flock is free, yet its writer runs: a filesystem without flock; respect it
                raise self._locked(rec)
            _notice(
                f"taking over the lock of a run that is gone ({_describe(rec)})"
                if rec
                else f"replacing an unreadable lock file {self.key}"
            )
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder_record()) + "\n").encode(), 0)
            os.fsync(fd)
        except OSError as e:  # a full disk: leave no empty lock file behind
            self._fd = fd
            self.release()
            raise UsageError(f"{self.key}: cannot write the lock ({e.strerror})") from None
        self._fd = fd
        out = fs.to_path(self.output).resolve()
        if out.exists() and not (out.is_dir() and os.access(out, os.W_OK | os.X_OK)):
            self.release()
            what = "is not a directory" if not out.is_dir() else "is not writable"
            raise UsageError(f"{out}: output path {what}")

    # -- fsspec URIs: exclusive create
    def _acquire_uri(self) -> None:
        store, key = self.path.fs, self.path.path
        data = (json.dumps(holder_record()) + "\n").encode()
        with contextlib.suppress(OSError, NotImplementedError):
            store.makedirs(self.path.parent.path, exist_ok=True)  # file://; object stores have no folders
        for attempt in range(2):
            try:
                with store.open(key, "xb") as f:
                    f.write(data)
                return
            except FileExistsError:
                pass
            except (ValueError, NotImplementedError, TypeError):  # no exclusive create on this store
                if not store.exists(key):
                    _notice(
                        f"{fs.display(self.output)}: this store cannot create a file exclusively; "
                        "the writer lock is advisory"
                    )
                    store.pipe_file(key, data)
                    return
            try:
                rec = _parse(store.cat_file(key))
            except FileNotFoundError:
                continue  # released meanwhile: try again
            if rec is not None and rec.get("host") != socket.gethostname():
                raise self._foreign(rec)
            if attempt or not _stale(rec):
                raise self._locked(rec)
            _notice(f"taking over the lock of a run that is gone ({_describe(rec)})")
            store.rm(key)
        raise self._locked(None)  # pragma: no cover

    def acquire(self) -> OutputLock:
        if fs.is_local(self.path):
            self._acquire_local()
        else:
            self._acquire_uri()
        return self

    def release(self) -> None:
        if fs.is_local(self.path):
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    if os.lstat(self.path).st_ino == os.fstat(self._fd).st_ino:  # still ours, not a replacement
                        os.unlink(self.path)  # while still holding it, so no one locks a file on its way out
                os.close(self._fd)
                self._fd = None
        else:
            with contextlib.suppress(OSError):
                self.path.fs.rm(self.path.path)


def _holds_finished_work(output: Any) -> bool:
    """Does an output hold anything a re-run would keep: a manifest or a finished task record, at any depth?"""
    p = fs.to_path(output)
    if not p.exists():
        return False
    if not p.is_dir():
        return True
    files = [str(f) for f in p.rglob("*")] if fs.is_local(p) else fs.list_files(str(p))
    return any(f.endswith("/_manifest.json") or "/_tasks/" in f.replace("\\", "/") for f in files)


@contextlib.contextmanager
def writer_lock(output: Any, enabled: bool = True, discard_unfinished: bool = False) -> Iterator[OutputLock | None]:
    """Hold the writer lock of `output` for the duration of the block (re-entrant in a process).

    With `discard_unfinished`, an output this block created is removed again when the block fails
    before any of its work finished (no manifest, no task record): a bad input or a Ctrl-C during
    set-up leaves the path as it was, and the corrected command is not refused."""
    if not enabled:
        yield None
        return
    lock = OutputLock(output)
    with _mutex:
        entry = _held.get(lock.key)
        if entry is not None:
            entry[1] += 1
    outer = entry is None
    if outer:
        lock.acquire()
        with _mutex:
            entry = _held[lock.key] = [lock, 1]
    fresh = outer and discard_unfinished and not fs.exists(output)
    try:
        yield entry[0]
    except BaseException:
        if fresh and not _holds_finished_work(output):
            fs.rmtree(output)
        raise
    finally:
        with _mutex:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[lock.key]
        if last:
            entry[0].release()


def exclusive_output(param: str | Callable[[dict[str, Any]], Any], discard_unfinished: bool = False) -> Callable:
    """Decorate a stage function so that it runs holding the writer lock of its output.

    `param` names the argument holding the output path, or is a function of all bound arguments
    that returns it (e.g. a default derived from another argument), or a list whose first item is
    the output and whose others are paths the stage writes beside it (each is locked, in one fixed
    order). `discard_unfinished`: see `writer_lock`, applied to the output."""

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            out = param(bound.arguments) if callable(param) else bound.arguments[param]
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            with contextlib.ExitStack() as stack:
                for o in sorted(outs, key=lambda o: str(lock_path(o))):  # one order everywhere: no deadlock
                    stack.enter_context(writer_lock(o, discard_unfinished=discard_unfinished and o is outs[0]))
                return fn(*args, **kwargs)

        return wrapper

    return deco


def is_lock_file(path: str | Path) -> bool:
    name = Path(str(path)).name
    return name.startswith(".") and name.endswith(".lock")
