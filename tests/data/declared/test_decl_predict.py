"""predict / evaluate round trip: a test-split file scores what training scored on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
from declared_tables import make_table, table_section

from manytask.config import config_from_mapping
from manytask.predict import evaluate, load_run, predict
from manytask.run import train_from_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, pa.Table]:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("run")
    table = make_table(300)
    pacsv.write_csv(table, root / "shop.csv")
    cfg = config_from_mapping({
        "data": "files", "dataset": table_section("shop.csv"), "data_root": str(root),
        "hidden": [32], "epochs": 2, "batch_size": 32, "run_dir": str(root / "run"),
        "progress": False, "cache_dir": str(root / "cache")})
    results = train_from_config(cfg)
    return root, results, table


def test_evaluate_on_the_test_rows_equals_the_runs_test_metrics(trained) -> None:  # type: ignore[no-untyped-def]
    root, results, table = trained
    test = table.filter(pc.equal(table["part"], "test"))
    pacsv.write_csv(test, root / "test.csv")
    metrics, problems, path = evaluate(root / "run", root / "test.csv")
    assert problems == []
    for task, row in results["test"].items():
        for name, value in row.items():
            assert metrics[task][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, name)
    saved = json.loads(path.read_text())
    assert saved["rows"] == test.num_rows and saved["rows_left_out"] == 0


def test_predictions_follow_the_model_and_the_input_order(trained) -> None:  # type: ignore[no-untyped-def]
    root, _, table = trained
    shuffled = table.take(pa.array(np.random.default_rng(1).permutation(table.num_rows)))
    values = shuffled["x1"].to_pylist()
    values[4] = "oops"
    bad = shuffled.set_column(0, "x1", pa.array([str(v) for v in values]))
    pacsv.write_csv(bad, root / "new.csv")
    problems = predict(root / "run", root / "new.csv", root / "pred.parquet")
    assert [str(p) for p in problems] == [
        f"{root / 'new.csv'}: row 5, column 'x1': not a number, got 'oops'"]
    import pyarrow.parquet as pq

    pred = pq.read_table(root / "pred.parquet")
    assert pred["row"].to_pylist() == list(range(1, table.num_rows + 1))
    assert pred["segment"][4].as_py() is None and pred["price"][4].as_py() is None
    # the probabilities of each row sum to 1 and the class is their argmax
    classes = load_run(root / "run").preprocessor.labels["segment"].classes
    assert classes is not None
    probs = np.stack([pred[f"segment:p({c})"].to_numpy(zero_copy_only=False) for c in classes], 1)
    ok = np.arange(len(probs)) != 4
    np.testing.assert_allclose(probs[ok].sum(1), 1, rtol=1e-5)
    assert [classes[i] for i in probs[ok].argmax(1)] == [
        v for i, v in enumerate(pred["segment"].to_pylist()) if i != 4]


def test_predict_refuses_an_unknown_output_format(trained) -> None:  # type: ignore[no-untyped-def]
    from manytask.data.declared import DataError

    root, _, _ = trained
    with pytest.raises(DataError, match="unknown file format"):
        predict(root / "run", root / "shop.csv", root / "pred.xlsx")
    assert not (root / "pred.xlsx").exists()


def test_a_file_read_with_options_is_evaluated_the_same_way(tmp_path: Path) -> None:
    """Trained on a headerless ", "-separated file with an uninformative name: evaluate reads
    a new file of that kind with the training run's read options, and scores its rows as the
    run scored its test split."""
    table = make_table(200)
    rows = table.to_pylist()
    names = table.column_names

    def write(path: Path, part: list[dict]) -> None:  # type: ignore[type-arg]
        path.write_text("".join(", ".join("" if r[c] is None else str(r[c]) for c in names)
                                + "\n" for r in part))

    write(tmp_path / "shop.data", rows)
    section = table_section("shop.data")
    section["table"].update(format="csv", header=False, columns=names,
                            skip_initial_space=True)
    cfg = config_from_mapping({
        "data": "files", "dataset": section, "data_root": str(tmp_path), "hidden": [16],
        "epochs": 1, "batch_size": 32, "run_dir": str(tmp_path / "run"), "progress": False,
        "cache_dir": str(tmp_path / "cache")})
    results = train_from_config(cfg)
    write(tmp_path / "test.data", [r for r in rows if r["part"] == "test"])
    metrics, problems, _ = evaluate(tmp_path / "run", tmp_path / "test.data")
    assert problems == []
    for task, row in results["test"].items():
        for name, value in row.items():
            assert metrics[task][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, name)
