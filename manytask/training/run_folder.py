"""The run folder: one training at a time, never two runs mixed, never a half-written file.

Rules (checked read-only first, so that a refused command writes nothing, then again under the
lock, so that two processes racing past the first check cannot both start):

* a folder that holds anything is refused unless the run resumes (``resume=True``) or starts
  again (``overwrite=True``, which removes the run's own files and refuses to remove others);
* ``resume=True`` with no checkpoint is an error; ``resume="if_exists"`` (for job schedulers
  that restart a command) resumes when there is a checkpoint and starts afresh otherwise,
  replacing the files of a run that never reached its first checkpoint;
* the settings that define a run must equal those recorded in ``config.yaml``, or the resume
  is refused naming the keys that differ; the settings that may change (``changeable``) are
  recorded, with the time and what changed, in ``config_history.jsonl`` beside it;
* a lock (``.lock``, an advisory ``flock`` that the kernel releases when its process dies) is
  held while training: a second process gets a clear error, and a lock file left by a killed
  process is recognised as stale (its ``flock`` is free) and taken over.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .checkpoint import atomic_write_text, latest_checkpoint

try:  # POSIX; elsewhere the lock degrades to a check of the recorded process id
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"
CONFIG = "config.yaml"
HISTORY = "config_history.jsonl"
TMP_PREFIX = ".tmp-"
# What a training writes into its folder (``overwrite`` removes these and nothing else).
RUN_ENTRIES = frozenset({
    CONFIG, HISTORY, LOCK, "checkpoints", "model", "tensorboard", "train.log",
    "steps.csv", "steps.jsonl", "metrics.csv", "metrics.jsonl", "experts.jsonl",
    "preprocessing.json",  # the fitted preprocessing of `data: files` runs
})
Resume = bool | Literal["if_exists"]


class RunFolderError(ValueError):
    """The run folder cannot be used as asked; the message is one line naming the folder."""


@dataclass
class Plan:
    """What opening the folder will do."""

    resume: bool  # a checkpoint is restored
    clear: list[str] = field(default_factory=list)  # run entries removed before starting
    changed: dict[str, list[Any]] = field(default_factory=dict)  # key -> [old, new]
    action: str = "start"


def _entries(path: Path) -> list[str]:
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if not p.name.startswith(TMP_PREFIX))


def _normal(value: Any) -> Any:
    # through JSON, as config.yaml stores it: tuples become lists, so equal values compare equal
    return json.loads(json.dumps(value, default=str))


def recorded_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The settings in ``run_dir/config.yaml`` (``safe_load``), or ``None``."""
    import yaml

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise RunFolderError(f"run_dir {str(run_dir)!r}: cannot read {CONFIG}: {err}") from None
    if not isinstance(values, dict):
        raise RunFolderError(f"run_dir {str(run_dir)!r}: {CONFIG} is not a mapping of settings")
    return values


def compare(
    old: Mapping[str, Any], new: Mapping[str, Any], changeable: Collection[str], where: str
) -> dict[str, list[Any]]:
    """The changed settings ``{key: [old, new]}``; a changed defining setting is an error.

    A key present on one side only (a setting added by a newer version) is compared with
    nothing and counts as changed only if it is changeable; it is recorded either way.
    """
    changed: dict[str, list[Any]] = {}
    refused: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = _normal(old.get(key)), _normal(new.get(key))
        if a == b:
            continue
        changed[key] = [a, b]
        if key in old and key in new and key not in changeable:
            refused.append(f"{key} {_short(a)} -> {_short(b)}")
    if refused:
        raise RunFolderError(
            f"run_dir {where!r} was trained with other settings: {'; '.join(refused)}. These "
            "define a run and cannot change on resume (use a new run_dir, or overwrite)"
        )
    return changed


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"


def plan_run(
    run_dir: str | Path,
    *,
    resume: Resume = False,
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
    changeable: Collection[str] = (),
    check_lock: bool = True,
) -> Plan:
    """Decide, reading only, what opening ``run_dir`` will do; raise if it is refused."""
    path = Path(run_dir)
    where = str(run_dir)
    if resume not in (True, False, "if_exists"):
        raise RunFolderError(f"resume must be true, false or 'if_exists', got {resume!r}")
    if resume and overwrite:
        raise RunFolderError("resume and overwrite exclude each other: pick one")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"run_dir {where!r} is a file, not a folder")
    holder = lock_holder(path) if check_lock else None
    if holder is not None:
        raise RunFolderError(
            f"run_dir {where!r} is in use by another training ({holder}); wait for it to end "
            "or use another run_dir"
        )
    entries = [e for e in _entries(path) if e != LOCK]
    ours = [e for e in entries if e in RUN_ENTRIES]
    if overwrite:
        foreign = [e for e in entries if e not in RUN_ENTRIES]
        if foreign:
            raise RunFolderError(
                f"run_dir {where!r} holds files that are not a run's ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); overwrite removes only a run's files"
            )
        return Plan(False, ours, action="overwrite")
    if not resume:
        if entries:
            raise RunFolderError(
                f"run_dir {where!r} is not empty ({', '.join(entries[:3])}"
                f"{', ...' if len(entries) > 3 else ''}): resume to continue it, overwrite "
                "to start it again, or use a new run_dir"
            )
        return Plan(False)
    ckpt = latest_checkpoint(path) if path.is_dir() else None
    old = recorded_config(path)
    changed = compare(old, config, changeable, where) if old and config is not None else {}
    if ckpt is not None:
        return Plan(True, changed=changed, action="resume")
    if resume is True:
        raise RunFolderError(
            f"run_dir {where!r} has no checkpoint to resume from (resume_if_exists starts "
            "afresh when there is none)"
        )
    return Plan(False, ours, action="start")  # if_exists, nothing to resume: a fresh start


class RunLock:
    """An exclusive lock on a run folder, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _try_lock(fd)
            except BlockingIOError:
                holder = _describe(_read(fd))
                os.close(fd)
                raise RunFolderError(
                    f"run_dir {str(self.path.parent)!r} is in use by another training "
                    f"({holder}); wait for it to end or use another run_dir"
                ) from None
            # the file may have been removed and replaced by its holder's release meanwhile
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read(fd)
        if old:
            warnings.warn(
                f"run_dir {str(self.path.parent)!r}: took over the stale lock of "
                f"{_describe(old)}, which is no longer running",
                RuntimeWarning,
                stacklevel=3,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing releases the flock
        self._fd = None


def _try_lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    holder = _read(fd)  # pragma: no cover - without flock: the recorded process must be gone
    if holder and holder.get("pid") != os.getpid() and _alive(holder.get("pid")):
        raise BlockingIOError


def _me() -> dict[str, Any]:
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


def _describe(holder: Mapping[str, Any] | None) -> str:
    if not holder or holder.get("pid") is None:
        return "an unknown process"
    return f"process {holder['pid']} on {holder.get('host', '?')} since {holder.get('since', '?')}"


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock (a description), or ``None``; reads only."""
    path = run_dir / LOCK
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        _try_lock(fd)
    except BlockingIOError:
        return _describe(_read(fd))
    finally:
        os.close(fd)  # also releases a lock it just took
    return None


def open_run(
    run_dir: str | Path,
    *,
    resume: Resume = False,
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
    changeable: Collection[str] = (),
) -> tuple[Plan, RunLock]:
    """Lock ``run_dir``, check it again under the lock, clear what the plan removes, record
    the configuration and its history. The caller releases the returned lock."""
    path = Path(run_dir)
    plan_run(path, resume=resume, overwrite=overwrite, config=config, changeable=changeable)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    lock = RunLock(path)
    try:
        lock.acquire()
        plan = plan_run(
            path, resume=resume, overwrite=overwrite, config=config, changeable=changeable,
            check_lock=False,
        )
        for name in plan.clear:
            target = path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        if config is not None:
            record_config(path, config, plan)
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return plan, lock


def record_config(run_dir: Path, config: Mapping[str, Any], plan: Plan) -> None:
    """Write ``config.yaml`` (atomically) and add a line to ``config_history.jsonl``."""
    import yaml

    atomic_write_text(run_dir / CONFIG, yaml.safe_dump(_normal(dict(config)), sort_keys=False))
    entry = {**_me(), "action": plan.action, "changed": plan.changed}
    entry.pop("host")
    history = run_dir / HISTORY
    old = history.read_text() if history.is_file() else ""
    if old and not old.endswith("\n"):  # a line cut off by a kill
        old = old[: old.rfind("\n") + 1]
    atomic_write_text(history, old + json.dumps(entry) + "\n")
