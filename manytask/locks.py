"""One process at a time in a folder: an advisory lock file with stale-lock detection.

The lock is a ``flock`` on a small file holding its holder's process id, host and start
time. The kernel releases a ``flock`` when its process dies, however it dies, so the file a
killed process leaves behind is recognised as stale (its ``flock`` is free) and taken over;
a live holder makes a second process fail at once with a one-line error naming it. Used by
the Trainer's run folder (``RUN/.lock``) and by merges into an output folder
(``.OUT.lock`` beside it, as the output folder itself is replaced whole).

This module imports nothing from the rest of the package: every layer may use it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

try:  # POSIX; elsewhere the lock degrades to a check of the recorded process id
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class FolderBusyError(ValueError):
    """Another live process holds the lock; the message is one line naming it."""


class FolderLock:
    """An exclusive lock on ``folder``, held from :meth:`acquire` to :meth:`release` through
    the file ``path``. ``what`` names the folder in messages (``"run_dir"``, ``"output
    folder"``), ``user`` what uses it (``"another training"``, ``"another merge"``)."""

    def __init__(self, path: str | os.PathLike[str], *, folder: str | os.PathLike[str],
                 what: str, user: str) -> None:
        self.path = Path(path)
        self.folder = Path(folder)
        self.what = what
        self.user = user
        self._fd: int | None = None

    def busy(self, holder: str) -> FolderBusyError:
        return FolderBusyError(
            f"{self.what} {str(self.folder)!r} is in use by {self.user} ({holder}); wait for "
            f"it to end or use another {self.what}"
        )

    def acquire(self) -> str | None:
        """Take the lock; return a description of the dead process whose stale lock was
        taken over (``None`` if the lock was free and clean). Raises :class:`FolderBusyError`
        when a live process holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _try_lock(fd)
            except BlockingIOError:
                holder = describe(_read(fd))
                os.close(fd)
                raise self.busy(holder) from None
            # the file may have been removed and replaced by its holder's release meanwhile
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me()).encode(), 0)
        self._fd = fd
        return describe(old) if old else None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing releases the flock
        self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _try_lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    holder = _read(fd)  # pragma: no cover - without flock: the recorded process must be gone
    if holder and holder.get("pid") != os.getpid() and process_alive(holder.get("pid")):
        raise BlockingIOError


def me() -> dict[str, Any]:
    """This process as a lock records it: ``{"pid", "host", "since"}``."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": now}


def _read(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 4096, 0)
        if not raw.strip():
            return None
        value = json.loads(raw.decode())
    except (OSError, ValueError):
        return {"pid": None}
    return value if isinstance(value, dict) else {"pid": None}


def describe(holder: Mapping[str, Any] | None) -> str:
    """``process PID on HOST since TIME`` of a lock's record."""
    if not holder or holder.get("pid") is None:
        return "an unknown process"
    return f"process {holder['pid']} on {holder.get('host', '?')} since {holder.get('since', '?')}"


def process_alive(pid: Any) -> bool:
    """Whether ``pid`` names a running process (of any user) on this machine."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(path: str | os.PathLike[str]) -> str | None:
    """Who holds the lock file ``path`` (a description), or ``None``; reads only."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        _try_lock(fd)
    except BlockingIOError:
        return describe(_read(fd))
    finally:
        os.close(fd)  # also releases a lock it just took
    return None
