"""The MiniLM merging benchmark's helpers, on a tiny random BERT (no weights download)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "merge_minilm.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("merge_minilm", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["merge_minilm"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("merge_minilm", None)


@pytest.fixture(scope="module")
def tiny_bert():
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3,
                                     num_attention_heads=2, intermediate_size=24,
                                     max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


class ToyTokenizer:
    """Words -> ids by length, [CLS]=1 ... [SEP]=2, padded with 0 to the longest."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        rows = [[1, *[3 + len(w) % 30 for w in t.split()][: max_length - 2], 2] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_load_task_formats_and_subsampling(bench, tmp_path: Path) -> None:
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "train.tsv").write_text("".join(f"{i % 2}\tsentence {i}\n"
                                                        for i in range(20)))
    (tmp_path / "toy" / "dev.tsv").write_text("1\tgood\n0\tbad\n\n")
    task = bench.load_task(tmp_path, "toy", 5, 10)
    assert task.classes == 2 and len(task.train_text) == 5 and len(task.test_text) == 2
    for text, y in zip(task.train_text, task.train_y.tolist(), strict=True):
        assert int(text.split()[1]) % 2 == y  # labels stay with their sentences
    again = bench.load_task(tmp_path, "toy", 5, 10)
    assert again.train_text == task.train_text  # seeded subsample

    (tmp_path / "trec").mkdir()
    (tmp_path / "trec" / "train_5500.label").write_bytes(
        "NUM:date When was it ?\nHUM:ind Who is caf\xe9 ?\n".encode("latin-1"))
    (tmp_path / "trec" / "TREC_10.label").write_bytes(b"LOC:city Where ?\n")
    trec = bench.load_task(tmp_path, "trec", 10, 10)
    assert trec.classes == 6
    assert sorted(zip(trec.train_text, trec.train_y.tolist(), strict=True)) == [
        ("When was it ?", 5), ("Who is caf\xe9 ?", 3)]
    assert trec.test_y.tolist() == [4]

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.tsv").write_text("no tab here\n")
    (tmp_path / "bad" / "dev.tsv").write_text("1\tok\n")
    with pytest.raises(ValueError, match=r"train\.tsv:1"):
        bench.load_task(tmp_path, "bad", 5, 5)


def test_cached_lower_layers_and_top_reproduce_the_model(bench, tiny_bert, monkeypatch) -> None:
    monkeypatch.setattr(bench, "FROZEN", 2)
    texts = ["a short one", "a much longer sentence with more words in it", "x"]
    packed = bench.encode_frozen(tiny_bert, ToyTokenizer(), texts, max_len=12, batch=2)
    assert packed.shape[-1] == 16 + 1
    top = bench.make_top([tiny_bert.encoder.layer[2]])
    enc = ToyTokenizer()(texts, "longest", True, 12, "pt")
    with torch.no_grad():
        hidden = tiny_bert(input_ids=enc["input_ids"],
                           attention_mask=enc["attention_mask"]).last_hidden_state
        got = top(packed)
    mask = enc["attention_mask"].unsqueeze(-1).float()
    want = (hidden * mask).sum(1) / mask.sum(1)  # mean over real tokens only
    assert torch.allclose(got, want, atol=1e-5)


def test_state_round_trip_and_drift(bench, tiny_bert, monkeypatch) -> None:
    monkeypatch.setattr(bench, "FROZEN", 1)
    base = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    top = bench.make_top([tiny_bert.encoder.layer[1], tiny_bert.encoder.layer[2]])
    import copy

    tuned = copy.deepcopy(top)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1.0)
    full = bench.encoder_state(base, tuned)
    assert set(full) == set(base)
    assert torch.equal(full["encoder.layer.2.output.dense.weight"],
                       base["encoder.layer.2.output.dense.weight"] + 1)
    assert torch.equal(full["encoder.layer.0.output.dense.weight"],
                       base["encoder.layer.0.output.dense.weight"])
    back = bench.top_state(full, 1, 2)
    assert back.keys() == tuned.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in tuned.state_dict().items())
    assert bench.lower_drift(full, base, 2) == 0.0  # only the top layers moved
    full["embeddings.LayerNorm.bias"] = full["embeddings.LayerNorm.bias"] + 0.5
    assert bench.lower_drift(full, base, 2) == pytest.approx(0.5)


def test_markdown_mean_column(bench) -> None:
    table = bench.markdown([("a", [90.0, 100.0]), ("b", [50.0, 70.0])], ["t1", "t2"])
    lines = table.strip().splitlines()
    assert lines[0] == "| method | t1 | t2 | mean |"
    assert lines[2] == "| a | 90.0 | 100.0 | 95.0 |"
    assert lines[3] == "| b | 50.0 | 70.0 | 60.0 |"


def test_fixed_head_hides_the_head_from_the_state_dict(bench, tiny_bert) -> None:
    top = bench.make_top([tiny_bert.encoder.layer[2]])
    head = torch.nn.Linear(16, 3)
    fixed = bench.FixedHead(top, head)
    assert all(k.startswith("top.") for k in fixed.state_dict())
    packed = torch.cat([torch.randn(2, 5, 16), torch.ones(2, 5, 1)], -1)
    with torch.no_grad():
        assert torch.allclose(fixed(packed), bench.Classifier(top, head)(packed))
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        bench.FixedHead(top, torch.nn.Tanh())
