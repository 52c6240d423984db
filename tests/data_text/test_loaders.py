"""The text loaders against the real files: the row counts and labels each README states."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from manytask.data.text import TEXT_TASKS, load_text_task

ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "text"
needs_data = pytest.mark.skipif(not ROOT.is_dir(), reason=f"shared text data not found at {ROOT}")

# (train file rows, val file rows or None, test file rows, test label counts), from the READMEs
README = {
    "sst2": (6920, None, 1821, {0: 912, 1: 909}, {0: 3310, 1: 3610}),
    "mr": (8529, None, 2133, {0: 1022, 1: 1111}, {0: 4309, 1: 4220}),
    "cr": (3016, None, 755, {0: 288, 1: 467}, {0: 1078, 1: 1938}),
    "subj": (8000, None, 2000, {0: 988, 1: 1012}, {0: 4012, 1: 3988}),
    "mpqa": (8482, None, 2121, {0: 1440, 1: 681}, {0: 5852, 1: 2630}),
    "cola": (7250, 1301, 1043, {0: 322, 1: 721}, {0: 2162, 1: 5088}),
    # RTE: 0 = not_entailment, 1 = entailment
    "rte": (2127, 363, 277, {1: 146, 0: 131}, {1: 1078, 0: 1049}),
    # TREC coarse, in the order ABBR, DESC, ENTY, HUM, LOC, NUM
    "trec": (5452, None, 500, {0: 9, 1: 138, 2: 94, 3: 65, 4: 81, 5: 113},
             {0: 86, 1: 1162, 2: 1250, 3: 1223, 4: 835, 5: 896}),
}


@needs_data
@pytest.mark.parametrize("name", TEXT_TASKS)
def test_counts_and_labels_match_the_readme(name: str) -> None:
    n_train, n_val, n_test, test_labels, train_file_labels = README[name]
    task = load_text_task(ROOT, name)
    assert len(task.test) == n_test
    assert dict(Counter(task.test.labels.tolist())) == test_labels
    if n_val is None:  # a 10% validation set carved from the training file
        assert len(task.train) + len(task.val) == n_train
        assert len(task.val) == round(0.1 * n_train)
        both = Counter(task.train.labels.tolist()) + Counter(task.val.labels.tolist())
        assert dict(both) == train_file_labels
    else:
        assert (len(task.train), len(task.val)) == (n_train, n_val)
        assert dict(Counter(task.train.labels.tolist())) == train_file_labels


@needs_data
@pytest.mark.parametrize(("name", "file"), [("sst2", "train.tsv"), ("cr", "train.tsv")])
def test_carved_splits_partition_the_training_file(name: str, file: str) -> None:
    a, b = load_text_task(ROOT, name), load_text_task(ROOT, name)
    assert a.train.texts == b.train.texts and a.val.texts == b.val.texts
    assert load_text_task(ROOT, name, split_seed=1).val.texts != a.val.texts
    rows = [line.split("\t") for line in (ROOT / name / file).read_text().splitlines()]
    whole = Counter((text, int(label)) for label, text in rows)
    train = Counter(zip(a.train.texts, a.train.labels.tolist(), strict=True))
    val = Counter(zip(a.val.texts, a.val.labels.tolist(), strict=True))
    assert train + val == whole  # every row of the file in exactly one of the two splits


@needs_data
def test_rte_gives_sentence_pairs_and_trec_fine_has_50_classes() -> None:
    rte = load_text_task(ROOT, "rte")
    assert all(isinstance(p, tuple) and len(p) == 2 for p in rte.train.texts)
    assert rte.label_names == ("not_entailment", "entailment")
    fine = load_text_task(ROOT, "trec", fine=True)
    assert fine.num_classes == 50
    assert all(n.split(":")[0] in {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}
               for n in fine.label_names)


@needs_data
def test_caps_take_fixed_subsets() -> None:
    task = load_text_task(ROOT, "mr")
    small = task.capped(100, 20, 30)
    assert (len(small.train), len(small.val), len(small.test)) == (100, 20, 30)
    assert set(small.train.texts) <= set(task.train.texts)
    assert small.train.texts == task.capped(100, 20, 30).train.texts
    assert task.capped(None, None, None).test is task.test
    with pytest.raises(ValueError, match="cap of train"):
        task.capped(0, 1, 1)


def test_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no folder"):
        load_text_task(tmp_path, "sst2")
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("1\tgood\n")
    with pytest.raises(FileNotFoundError, match=r"dev\.tsv"):
        load_text_task(tmp_path, "sst2")
    with pytest.raises(ValueError, match="unknown task"):
        load_text_task(tmp_path, "imdb")


@pytest.mark.parametrize(
    ("name", "files", "bad"),
    [
        ("cr", {"train.tsv": "1\tgood\n0\tbad\n2\tugly\n", "dev.tsv": "1\tok\n"},
         r"train.tsv, line 3: label '2'"),
        ("mpqa", {"train.tsv": "1\tgood\nno tab here\n", "dev.tsv": "1\tok\n"},
         r"train.tsv, line 2: expected 'label<TAB>text'"),
        ("cola", {"train.tsv": "src\t1\t\tfine .\nsrc\t0\n", "val.tsv": "", "dev.tsv": ""},
         r"train.tsv, line 2: expected 4"),
        ("trec", {"train_5500.label": "HUM:ind Who ?\nWHAT:x y ?\n", "TREC_10.label": ""},
         r"train_5500.label, line 2"),
        ("rte", {"train.tsv": "index\ts1\ts2\tlabel\n0\ta\tb\tmaybe\n", "val.tsv": "",
                 "dev.tsv": ""}, r"train.tsv, line 2: label 'maybe'"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, name: str,
                                            files: dict[str, str], bad: str) -> None:
    (tmp_path / name).mkdir()
    for file, text in files.items():
        (tmp_path / name / file).write_text(text)
    with pytest.raises(ValueError, match=bad):
        load_text_task(tmp_path, name)
