"""``manytask merge`` as a process the fault tests can kill.

``python _merge.py CONFIG OUT_DIR [--stall MARKER] [--stall-replacing MARKER]``: the ``merge``
command; with ``--stall`` the writer stops after its first block of merged rows, touches
``MARKER`` and sleeps, so that a test can kill the process while the output is being written;
with ``--stall-replacing`` it stops in the middle of replacing a previous result (after the
exchange of the folders, before the old one is removed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from manytask.cli import main
from manytask.merging import writer


def stall_writes(marker: Path) -> None:
    real = writer.ShardedWriter.write

    def stalling(self: writer.ShardedWriter, rows: Any) -> None:
        real(self, rows)
        marker.touch()
        time.sleep(120)

    writer.ShardedWriter.write = stalling  # type: ignore[method-assign]


def stall_replacing(marker: Path) -> None:
    def stalling() -> None:
        marker.touch()
        time.sleep(120)

    writer._between_renames = stalling


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--stall-replacing" in args:
        i = args.index("--stall-replacing")
        stall_replacing(Path(args[i + 1]))
        del args[i : i + 2]
    if "--stall" in args:
        i = args.index("--stall")
        stall_writes(Path(args[i + 1]))
        del args[i : i + 2]
    sys.exit(main(["merge", "--quiet", *args]))
