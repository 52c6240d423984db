"""`manytask affinity` and `manytask group` end to end on a tiny run; determinism under a seed."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from manytask import HardSharing
from manytask.cli.grouping import add_affinity_commands
from manytask.data import MultiDigits, TensorBatches
from manytask.grouping import (
    AffinityMatrix,
    measure_affinity,
    read_matrices,
    search_groups,
    write_matrices,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manytask")
    add_affinity_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    code: int = args.func(args)
    return code


def test_affinity_then_group_writes_every_file(tmp_path, capsys) -> None:
    run = tmp_path / "aff"
    assert (
        _run(
            [
                "affinity",
                "--tasks",
                "left",
                "right",
                "larger",
                "--train-size",
                "256",
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--hidden",
                "32",
                "--every",
                "1",
                "--no-progress",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    for name in ("affinity.json", "affinity.csv", "affinity.png"):
        assert (run / name).stat().st_size > 0
    matrices = read_matrices(run)
    assert set(matrices) == {"lookahead", "cosine", "cosine_feature", "datamap"}
    assert matrices["cosine"].tasks == ("left", "right", "larger")
    assert np.allclose(np.diag(matrices["cosine"].values), 1.0)
    meta = json.loads((run / "affinity.json").read_text())["meta"]
    assert meta["steps"] == 4 and meta["datamaps_on"] == "val"
    rows = (run / "affinity.csv").read_text().splitlines()
    assert rows[0] == "kind,source,target,value" and len(rows) == 1 + 4 * 9

    assert _run(["group", str(run), "--budget", "2"]) == 0
    data = json.loads((run / "groups.json").read_text())
    assert data["kind"] == "lookahead"
    expected = search_groups(matrices["lookahead"], 2)
    assert data["grouping"]["groups"] == [list(g) for g in expected.groups]
    assert data["grouping"]["score"] == pytest.approx(expected.score)
    assert (run / "groups.png").stat().st_size > 0
    assert "Predicted score" in (run / "groups.md").read_text()
    out = tmp_path / "grp"
    assert (
        _run(
            [
                "group",
                str(run / "affinity.json"),
                "--budget",
                "2",
                "--kind",
                "cosine",
                "--overlap",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "groups.json").read_text())["grouping"]["overlap"] == [
        "left",
        "right",
        "larger",
    ]
    capsys.readouterr()


def test_group_reads_a_csv_matrix_and_refuses_bad_requests(tmp_path) -> None:
    m = AffinityMatrix(("a", "b", "c"), np.array([[0, 1, -1], [1, 0, -1], [-1, -1, 0.0]]))
    m.write_csv(tmp_path / "m.csv")
    assert AffinityMatrix.read_csv(tmp_path / "m.csv").values.tolist() == m.values.tolist()
    assert _run(["group", str(tmp_path / "m.csv"), "--budget", "2"]) == 0
    groups = json.loads((tmp_path / "groups.json").read_text())["grouping"]["groups"]
    assert sorted(groups) == [["a", "b"], ["c"]]
    write_matrices(tmp_path / "two.json", [m, AffinityMatrix(m.tasks, m.values, "other")])
    with pytest.raises(ValueError, match="--kind"):
        _run(["group", str(tmp_path / "two.json"), "--budget", "2"])
    with pytest.raises(ValueError, match="no matrix"):
        _run(["group", str(tmp_path / "two.json"), "--budget", "2", "--kind", "nope"])
    with pytest.raises(FileNotFoundError):
        _run(["group", str(tmp_path / "missing"), "--budget", "2"])


def _measure(seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    splits = MultiDigits.splits(
        sizes={"train": 128, "val": 64, "test": 64}, tasks=("left", "right", "larger")
    )
    tasks = splits["train"].tasks()
    train = TensorBatches.from_dataset(splits["train"], 32, shuffle=True, seed=seed)
    probe = TensorBatches.from_dataset(splits["val"], 32, shuffle=False)
    model = HardSharing(tasks, in_features=128, hidden=(16,))
    run = measure_affinity(model, tasks, train, epochs=2, every=1, probe=probe)
    return {k: m.values for k, m in run.matrices.items()}


def test_measure_affinity_is_deterministic_under_a_seed() -> None:
    first, again, other = _measure(0), _measure(0), _measure(1)
    assert set(first) == {"lookahead", "cosine", "cosine_feature", "datamap"}
    for kind in first:
        assert np.array_equal(first[kind], again[kind]), kind
    assert not np.array_equal(first["lookahead"], other["lookahead"])


def test_measure_affinity_refuses_bad_arguments() -> None:
    splits = MultiDigits.splits(sizes={"train": 32, "val": 32, "test": 32})
    tasks = splits["train"].tasks()
    model = HardSharing(tasks, in_features=128, hidden=(8,))
    data = TensorBatches.from_dataset(splits["train"], 16)
    with pytest.raises(ValueError, match="epochs"):
        measure_affinity(model, tasks, data, epochs=0)
    with pytest.raises(ValueError, match="every"):
        measure_affinity(model, tasks, data, epochs=1, every=0)


def test_affinity_with_pairwise_adds_the_transfer_and_its_correlations(tmp_path) -> None:
    run = tmp_path / "pw"
    assert (
        _run(
            [
                "affinity",
                "--tasks",
                "left",
                "right",
                "larger",
                "--train-size",
                "128",
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--hidden",
                "16",
                "--every",
                "1",
                "--no-progress",
                "--no-datamaps",
                "--pairwise",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    data = json.loads((run / "affinity.json").read_text())
    assert set(data["matrices"]) == {"lookahead", "cosine", "cosine_feature", "transfer"}
    assert data["meta"]["pairwise_trainings"] == 6
    assert set(data["meta"]["rank_correlation_with_transfer"]) == {
        "lookahead",
        "cosine",
        "cosine_feature",
    }
    transfer = read_matrices(run)["transfer"]
    assert np.all(np.diag(transfer.values) == 0)
