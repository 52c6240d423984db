"""Count the hostile-input cases that ``tests/hostile`` tries, by kind, as a Markdown table.

The count is what pytest collects (each parametrised case is one), so it cannot drift from
the suite. A fuzzed test counts once as a case, and the table adds how many generated
examples it tries (hypothesis ``max_examples``, fixed by ``derandomize`` in the suite)::

    python benchmarks/hostile_count.py            # from the repository root
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "hostile"

# test file -> the kind of hostile input it tries (in the order of the issue)
KINDS = {
    "test_hos_corrupt.py": "truncated or corrupted files (weights, checkpoints)",
    "test_hos_headers.py": "safetensors headers that lie (shapes, offsets, dtypes, length)",
    "test_hos_pickle.py": "a pickle where safetensors is expected",
    "test_hos_configs.py": "configs: unknown keys, wrong types, out-of-range values",
    "test_hos_labels.py": "labels out of range",
    "test_hos_nonfinite.py": "NaN or inf in inputs, losses and merge inputs",
    "test_hos_empty.py": "empty data sets, a batch with no labelled task",
    "test_hos_heads.py": "model heads that do not match the tasks",
    "test_hos_paths.py": "paths that escape (shard index, output, run folder, resume)",
}


def collect() -> list[str]:
    """Node ids of every test in the suite, as pytest collects them."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            str(SUITE),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    if done.returncode != 0 or not ids:
        raise SystemExit(f"collection failed:\n{done.stdout}\n{done.stderr}")
    return ids


def fuzz_examples() -> int:
    """``max_examples`` of the suite's hypothesis settings."""
    text = (SUITE / "test_hos_configs.py").read_text()
    found = re.search(r"max_examples=(\d+)", text)
    return int(found.group(1)) if found else 0


def table(ids: list[str]) -> str:
    cases: Counter[str] = Counter()
    fuzzed: Counter[str] = Counter()
    for node in ids:
        file = Path(node.split("::")[0]).name
        cases[file] += 1
        if "fuzzed" in node:
            fuzzed[file] += 1
    unknown = sorted(set(cases) - set(KINDS))
    if unknown:
        raise SystemExit(f"test files without a kind in KINDS: {unknown}")
    per = fuzz_examples()
    rows = ["| kind of hostile input | cases | of which fuzzed |", "|---|---:|---|"]
    for file, kind in KINDS.items():
        extra = f"{fuzzed[file]} (x {per} examples)" if fuzzed[file] else ""
        rows.append(f"| {kind} | {cases[file]} | {extra} |")
    total_fuzz = sum(fuzzed.values())
    rows.append(
        f"| **total** | **{sum(cases.values())}** | {total_fuzz} (x {per} = "
        f"{total_fuzz * per} generated configs) |"
    )
    return "\n".join(rows)


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    print(table(collect()))


if __name__ == "__main__":
    main()
