"""Count the hostile-input cases that ``tests/hostile`` tries, by kind, as a Markdown table.

The count is what pytest collects (each parametrised case is one), so it cannot drift from
the suite. A fuzzed test counts once as a case, and the table adds how many generated
examples it tries (hypothesis ``max_examples``, fixed by ``derandomize`` in the suite).
The failure classes of issue 16 get a section of their own (``--markdown`` prints both
tables with their headings, as docs/hostile.md holds them)::

    python benchmarks/hostile_count.py              # from the repository root
    python benchmarks/hostile_count.py --markdown   # the tables of docs/hostile.md
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

C1 = "1. links out of a folder (weights, shards, copied files, LoRA, runs, data, cells)"
C2 = "2. patterns that could stall (LoRA alpha/rank patterns, adapter target_modules)"
C3 = "3. YAML and JSON that explode (alias bombs, deep nesting, huge values)"
C4 = "4. non-finite or mistyped tensors written or loaded"
C5 = "5. pipes, devices and folders where a file is expected"
C6 = "6. outputs that replace the user's files; killed replacements; concurrent merges"
C7 = "7. commands that succeed when they failed (bench, report, predict, evaluate)"
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
    # the failure classes of issue 16, in its order (several files may try one class)
    "test_hos_links.py": C1,
    "test_hos_run_links.py": C1,
    "test_hos_patterns.py": C2,
    "test_hos_adapter_patterns.py": C2,
    "test_hos_bombs.py": C3,
    "test_hos_run_bombs.py": C3,
    "test_hos_overflow.py": C4,
    "test_hos_run_overflow.py": C4,
    "test_hos_notfiles.py": C5,
    "test_hos_run_notfiles.py": C5,
    "test_hos_outputs.py": C6,
    "test_hos_run_outputs.py": C6,
    "test_hos_locks.py": C6,
    "test_hos_bench.py": C7,
    "test_hos_run_succeed.py": C7,
    "test_hos_oneline.py": "8. tracebacks instead of one line (data columns, preprocessing, seeds)",
    "test_hos_cli.py": "9. the command line explains itself (help, choices, version, options)",
}
ISSUE_16 = tuple(f for f in KINDS if KINDS[f][0].isdigit())


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


def table(ids: list[str], files: tuple[str, ...] | None = None) -> str:
    """The table of ``files`` (all kinds when ``None``), counted from the node ids."""
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
    chosen = [f for f in KINDS if files is None or f in files]
    for kind in dict.fromkeys(KINDS[f] for f in chosen):  # one row per kind, in order
        mine = [f for f in chosen if KINDS[f] == kind]
        n_fuzzed = sum(fuzzed[f] for f in mine)
        extra = f"{n_fuzzed} (x {per} examples)" if n_fuzzed else ""
        rows.append(f"| {kind} | {sum(cases[f] for f in mine)} | {extra} |")
    total_fuzz = sum(fuzzed[f] for f in chosen)
    fuzz_text = f"{total_fuzz} (x {per} = {total_fuzz * per} generated configs)"
    rows.append(
        f"| **total** | **{sum(cases[f] for f in chosen)}** | {fuzz_text if total_fuzz else ''} |"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="both tables with headings")
    args = parser.parse_args()
    ids = collect()
    if not args.markdown:
        print(table(ids))
        return
    original = tuple(f for f in KINDS if f not in ISSUE_16)
    print("### The failure classes of issue 16\n")
    print(table(ids, ISSUE_16))
    print("\n### The original suite\n")
    print(table(ids, original))
    print(f"\n{len(ids)} cases in all.")


if __name__ == "__main__":
    main()
