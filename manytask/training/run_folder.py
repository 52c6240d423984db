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
* a lock (``.lock``, :class:`manytask.locks.FolderLock`: an advisory ``flock`` that the
  kernel releases when its process dies) is held while training: a second process gets a
  clear error, and a lock file left by a killed process is recognised as stale (its
  ``flock`` is free) and taken over.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..files import UnsafeFileError, inside, load_yaml
from ..locks import FolderBusyError, FolderLock, lock_holder, me
from .checkpoint import atomic_write_text, check_checkpoint_files, latest_checkpoint

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


def recorded_config(run_dir: str | Path, *, allow_outside: bool = False) -> dict[str, Any] | None:
    """The settings in ``run_dir/config.yaml`` (the bounded safe loader of
    :func:`manytask.files.load_yaml`: a regular file of the folder, no alias bomb), or
    ``None``. A ``config.yaml`` linking out of the folder is refused unless ``allow_outside``."""
    path = Path(run_dir) / CONFIG
    if not path.exists() and not path.is_symlink():
        return None
    try:
        inside(run_dir, CONFIG, what=f"run_dir {str(run_dir)!r}: {CONFIG}",
               allow_outside=allow_outside,
               hint="unless you allow links out of the run folder (--allow-outside-links)")
        values = load_yaml(path, what=CONFIG)
    except UnsafeFileError as err:
        raise RunFolderError(f"run_dir {str(run_dir)!r}: {err}") from None
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
    allow_outside_links: bool = False,
) -> Plan:
    """Decide, reading only, what opening ``run_dir`` will do; raise if it is refused.
    Its checkpoints and ``config.yaml`` may link out of it only if ``allow_outside_links``."""
    path = Path(run_dir)
    where = str(run_dir)
    if resume not in (True, False, "if_exists"):
        raise RunFolderError(f"resume must be true, false or 'if_exists', got {resume!r}")
    if resume and overwrite:
        raise RunFolderError("resume and overwrite exclude each other: pick one")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"run_dir {where!r} is a file, not a folder")
    holder = lock_holder(path / LOCK) if check_lock else None
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
    ckpt = latest_checkpoint(path, allow_outside=allow_outside_links) if path.is_dir() else None
    old = recorded_config(path, allow_outside=allow_outside_links)
    changed = compare(old, config, changeable, where) if old and config is not None else {}
    if ckpt is not None:
        check_checkpoint_files(ckpt, allow_outside=allow_outside_links)
        return Plan(True, changed=changed, action="resume")
    if resume is True:
        raise RunFolderError(
            f"run_dir {where!r} has no checkpoint to resume from (resume_if_exists starts "
            "afresh when there is none)"
        )
    return Plan(False, ours, action="start")  # if_exists, nothing to resume: a fresh start


class RunLock(FolderLock):
    """An exclusive lock on a run folder (:class:`manytask.locks.FolderLock` on ``RUN/.lock``),
    held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(Path(run_dir) / LOCK, folder=run_dir, what="run_dir",
                         user="another training")

    def acquire(self) -> str | None:
        try:
            stale = super().acquire()
        except FolderBusyError as err:
            raise RunFolderError(str(err)) from None
        if stale:
            warnings.warn(
                f"run_dir {str(self.folder)!r}: took over the stale lock of {stale}, which "
                "is no longer running",
                RuntimeWarning,
                stacklevel=2,
            )
        return stale


def open_run(
    run_dir: str | Path,
    *,
    resume: Resume = False,
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
    changeable: Collection[str] = (),
    allow_outside_links: bool = False,
) -> tuple[Plan, RunLock]:
    """Lock ``run_dir``, check it again under the lock, clear what the plan removes, record
    the configuration and its history. The caller releases the returned lock."""
    path = Path(run_dir)
    plan_run(path, resume=resume, overwrite=overwrite, config=config, changeable=changeable,
             allow_outside_links=allow_outside_links)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    lock = RunLock(path)
    try:
        lock.acquire()
        plan = plan_run(
            path, resume=resume, overwrite=overwrite, config=config, changeable=changeable,
            check_lock=False, allow_outside_links=allow_outside_links,
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
    entry = {**me(), "action": plan.action, "changed": plan.changed}
    entry.pop("host")
    history = run_dir / HISTORY
    old = history.read_text() if history.is_file() else ""
    if old and not old.endswith("\n"):  # a line cut off by a kill
        old = old[: old.rfind("\n") + 1]
    atomic_write_text(history, old + json.dumps(entry) + "\n")
