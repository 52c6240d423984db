"""Reading the files users hand us, and writing ours, without being led astray.

One mechanism per failure class, used wherever a user file is opened or a result written:

* :func:`inside` - a path read from a folder (a shard named by an index, a tokenizer file, a
  checkpoint of a run) resolved and refused when it leaves that folder, naming the link;
* :func:`regular_file` - a named pipe, a device or a folder where a file is expected refused
  before it is opened (opening a FIFO blocks until a writer comes: forever);
  :func:`folder_files` - both checks for every file of a folder another library opens whole;
* :func:`load_yaml` / :func:`load_json` - bounded loaders: a safe YAML loader that refuses more
  than a few aliases (an alias bomb expands to gigabytes when printed or walked) and deep
  nesting, and JSON with a nesting limit checked before parsing;
* :func:`atomic_write_text` - write a temporary sibling, flush it, rename it into place.

This module imports nothing from the rest of the package: every layer may use it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

MAX_ALIASES = 100
"""Most YAML aliases a file may use: real configs use a handful; a bomb needs many."""
MAX_EXPANDED = 100_000
"""Most values a YAML document may hold once its aliases are expanded (nine aliases to nine
aliases to ... make a billion with fewer than 100 aliases)."""
MAX_DEPTH = 64
"""Deepest nesting of a YAML or JSON value (configs and states are a few levels deep)."""
MAX_TEXT_BYTES = 64 * 2**20
"""Largest config/state/index file read as text (a shard index of a 1T-parameter model is
a few MB)."""


class UnsafeFileError(ValueError):
    """A user file that is refused: it leaves its folder, is not a regular file, is too big,
    or holds YAML/JSON past the bounds. The message is one line naming the file."""


def _cut(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was (messages stay one line)."""
    text = str(text).replace("\n", " ")
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} characters)"


def inside(
    folder: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    what: str = "file",
    allow_outside: bool = False,
    hint: str = "unless you allow links out of input folders (--allow-outside-links)",
) -> Path:
    """``path`` (a file of ``folder``, or a name relative to it) resolved through every link.

    Raises :class:`UnsafeFileError` naming the link when the resolved path is not inside the
    resolved ``folder`` (or, for a hub cache snapshot, its repository's ``blobs``), unless
    ``allow_outside`` (the user's explicit choice, e.g. the ``--allow-outside-links`` flag).
    Returns the path as given (joined to ``folder``), so messages keep the user's names.
    ``hint`` ends the message (how to allow it, or why it cannot be).
    """
    root = Path(folder)
    given = root / path
    real = given.resolve()
    if allow_outside or any(real.is_relative_to(r) for r in _own_roots(root)):
        return given
    link = _first_link(root, given)
    via = "" if link == given else f" through the link {str(link)!r}"
    raise UnsafeFileError(
        f"{what} {str(given)!r} leads outside its folder{via}, to {str(real)!r}; refused "
        f"{hint}"
    )


def _own_roots(root: Path) -> list[Path]:
    """Where the files of ``root`` may really be: inside it, and for a Hugging Face hub
    cache snapshot (``.../snapshots/REV``) in that repository's ``blobs`` folder, where the
    hub keeps the files its snapshots link to."""
    real = root.resolve()
    roots = [real]
    if real.parent.name == "snapshots" and (real.parent.parent / "blobs").is_dir():
        roots.append(real.parent.parent / "blobs")
    return roots


def _first_link(root: Path, given: Path) -> Path:
    """The first component of ``given`` below ``root`` that is a symbolic link (or ``given``)."""
    try:
        parts = given.relative_to(root).parts
    except ValueError:
        return given
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            return current
    return given


def folder_files(
    folder: str | os.PathLike[str], *, what: str = "file", allow_outside: bool = False,
    hint: str = "unless you allow links out of input folders (--allow-outside-links)",
) -> list[Path]:
    """Every file under ``folder`` (a folder another library opens whole, e.g. a ``datasets``
    ``save_to_disk`` folder), each checked as :func:`inside` it and a :func:`regular_file`:
    the library would follow a link out, or block on a pipe, where we cannot see it."""
    root = Path(folder)
    found = []
    for here, dirs, files in os.walk(root, followlinks=False):
        for name in [*files, *(d for d in dirs if (Path(here) / d).is_symlink())]:
            rel = (Path(here) / name).relative_to(root)
            path = inside(root, rel, what=what, allow_outside=allow_outside, hint=hint)
            if not path.is_dir():
                found.append(regular_file(path, what=what))
    return found


def regular_file(path: str | os.PathLike[str], *, what: str = "file") -> Path:
    """``path`` if it is a regular file (after links); else :class:`UnsafeFileError` (missing,
    a folder, a pipe, a device, a socket). ``stat`` never blocks, where ``open`` on a FIFO
    would wait for a writer forever."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise UnsafeFileError(f"{what} {str(p)!r} does not exist") from None
    except OSError as err:
        raise UnsafeFileError(f"cannot read {what} {str(p)!r}: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UnsafeFileError(
            f"{what} {str(p)!r} is {_kind(mode)}, not a regular file; refused"
        )
    return p


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def read_text(
    path: str | os.PathLike[str], *, what: str = "file", limit: int = MAX_TEXT_BYTES
) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes."""
    p = regular_file(path, what=what)
    size = p.stat().st_size
    if size > limit:
        raise UnsafeFileError(f"{what} {str(p)!r} is {size} bytes, over the {limit} read")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UnsafeFileError(f"{what} {str(p)!r} is not UTF-8 text ({err.reason})") from None
    except OSError as err:
        raise UnsafeFileError(f"cannot read {what} {str(p)!r}: {err.strerror}") from None


# ---------------------------------------------------------------------------- YAML
def _bounded_loader(where: str) -> type:
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        """``SafeLoader`` that counts aliases and nesting while composing the node graph,
        before any value is built: an alias bomb is refused at its 101st alias."""

        aliases = 0
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise UnsafeFileError(
                        f"{where}: more than {MAX_ALIASES} YAML aliases (*name); refused "
                        "(an alias bomb expands exponentially)"
                    )
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    raise UnsafeFileError(
                        f"{where}: YAML nested deeper than {MAX_DEPTH} levels; refused"
                    )
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def compose_document(self) -> Any:
            node = super().compose_document()
            if node is not None and self.aliases:
                _expanded_size(node, {}, where)
            return node

    return BoundedLoader


def _expanded_size(node: Any, memo: dict[int, int], where: str) -> int:
    """How many values ``node`` holds with every alias expanded, memoised per node, so the
    count costs one visit per distinct node; refuses past :data:`MAX_EXPANDED` and cycles."""
    key = id(node)
    if key in memo:
        if memo[key] < 0:
            raise UnsafeFileError(f"{where}: a YAML alias refers to itself; refused")
        return memo[key]
    memo[key] = -1
    value = node.value
    total = 1
    if isinstance(value, list):
        for item in value:
            parts = item if isinstance(item, tuple) else (item,)
            for part in parts:
                total += _expanded_size(part, memo, where)
                if total > MAX_EXPANDED:
                    raise UnsafeFileError(
                        f"{where}: YAML aliases expand to more than {MAX_EXPANDED} values; "
                        "refused (an alias bomb)"
                    )
    memo[key] = total
    return total


def parse_yaml(text: str, *, where: str = "YAML") -> Any:
    """Parse ``text`` with the bounded safe loader; errors are one line naming ``where``."""
    import yaml

    loader = None
    try:
        loader = _bounded_loader(where)(text)  # the reader refuses control characters here
        return loader.get_single_data()
    except yaml.YAMLError as err:
        line = " ".join(str(err).split())
        raise UnsafeFileError(f"{where} is not valid YAML: {_cut(line, 200)}") from None
    except RecursionError:
        raise UnsafeFileError(f"{where}: YAML nested too deeply; refused") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: str | os.PathLike[str], *, what: str = "YAML file") -> Any:
    """A regular YAML file read with :func:`parse_yaml`."""
    text = read_text(path, what=what)
    return parse_yaml(text, where=f"{what} {str(path)!r}")


# ---------------------------------------------------------------------------- JSON
# A JSON string (escapes included), matched without backtracking: each character is either
# a plain one or a backslash pair, never both.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """Deepest bracket nesting of JSON ``text``, brackets inside strings ignored."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json(text: str, *, where: str = "JSON") -> Any:
    """``json.loads`` after checking nesting (deep nesting ends in a ``RecursionError``
    inside the parser, a traceback); errors are one line naming ``where``."""
    if json_depth(text) > MAX_DEPTH:
        raise UnsafeFileError(f"{where}: JSON nested deeper than {MAX_DEPTH} levels; refused")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise UnsafeFileError(f"{where} is not valid JSON: {_cut(str(err), 200)}") from None


def load_json(path: str | os.PathLike[str], *, what: str = "JSON file") -> Any:
    """A regular JSON file read with :func:`parse_json`."""
    return parse_json(read_text(path, what=what), where=f"{what} {str(path)!r}")


# ---------------------------------------------------------------------------- writing
def atomic_write_text(path: str | os.PathLike[str], text: str, *, prefix: str = ".") -> None:
    """Write ``text`` to ``path`` through a flushed temporary sibling (``prefix`` + name, so a
    folder's clean-up can recognise leftovers of a kill) and ``os.replace``: a reader sees the
    old file or the new one, never a part. Newlines are written as given."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f"{prefix}{p.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
