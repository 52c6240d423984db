"""Fine-tuning the top encoder layers on cached lower layers, on a tiny random BERT."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest
import torch

import manytask
from manytask.data.encoders import SentenceEncoder
from manytask.data.hidden_states import HiddenStateCache, LowerEncoder, unpack
from manytask.data.text import MixedTaskBatches, Text, TextSplit, TextTask, stacked_batches
from manytask.models.encoder_top import EncoderTop, TopLayers, top_state
from manytask.tasks import Task
from manytask.training.finetune import prepare_finetune

WORDS = ["the", "a", "movie", "was", "good", "bad", "great", "plot", "what", "is", "who", "?", "."]
LAYERS = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    path = tmp_path_factory.mktemp("bert") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(path))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return transformers.BertModel(config, add_pooling_layer=False).eval(), tokenizer


SENTENCES = [
    "the movie was good .",
    "a bad plot",
    "what is the plot ?",
    "great",
    "who was the movie ?",
    "the plot was a great movie plot , good good good",
]


def alone(model: Any, tokenizer: Any, text: Text, max_length: int) -> torch.Tensor:
    """The full model on one text alone (no padding at all): normalised mean of its tokens."""
    args = (text,) if isinstance(text, str) else text
    tokens = tokenizer(*args, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state[0]
    return hidden.mean(0) / hidden.mean(0).norm()


def top_of(model: Any, n: int) -> TopLayers:
    return TopLayers([copy.deepcopy(layer) for layer in model.encoder.layer[LAYERS - n :]]).eval()


@pytest.mark.slow  # transformers import and several encoder passes
@pytest.mark.parametrize("n", [1, 2])
def test_cached_lower_layers_and_top_reproduce_the_full_model(
    tiny: tuple[Any, Any], n: int
) -> None:
    model, tokenizer = tiny
    lower = LowerEncoder(
        model, tokenizer, LAYERS - n, max_length=16, batch_size=2, dtype=torch.float32
    )
    ragged = lower.encode(SENTENCES)
    lengths = [tokenizer(s, truncation=True, max_length=16)["input_ids"] for s in SENTENCES]
    assert ragged["lengths"].tolist() == [len(ids) for ids in lengths]  # the texts' order
    hidden, mask = unpack(ragged["tokens"], ragged["lengths"], 20)  # more padding than needed
    top = top_of(model, n)
    want = torch.stack([alone(model, tokenizer, s, 16) for s in SENTENCES])
    with torch.no_grad():
        got = top({"hidden": hidden, "mask": mask})
        pair = top((hidden, mask))
        packed = top(torch.cat([hidden, mask[..., None].float()], -1))
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(pair, got) and torch.allclose(packed, got)
    frozen = SentenceEncoder(model, tokenizer, max_length=16).encode(SENTENCES)
    assert torch.allclose(got, frozen, atol=1e-5)  # untrained, it is the frozen path
    # float16 storage: the same up to half precision
    half = LowerEncoder(model, tokenizer, LAYERS - n, max_length=16, dtype=torch.float16)
    half_ragged = half.encode(SENTENCES)
    assert half_ragged["tokens"].dtype == torch.float16
    with torch.no_grad():
        got_half = top(dict(zip(("hidden", "mask"), unpack(**half_ragged), strict=True)))
    assert torch.allclose(got_half, want, atol=1e-2)


@pytest.mark.slow
def test_sentence_pairs_and_truncation(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    pairs: list[Text] = [("the movie", "was good"), ("a plot", "what is who ? the plot is bad")]
    lower = LowerEncoder(model, tokenizer, 2, max_length=8, dtype=torch.float32)
    ragged = lower.encode(pairs)
    want_lengths = [len(tokenizer(*p, truncation=True, max_length=8)["input_ids"]) for p in pairs]
    assert ragged["lengths"].tolist() == want_lengths and want_lengths[1] == 8  # truncated
    with torch.no_grad():
        got = top_of(model, 1)(unpack(ragged["tokens"], ragged["lengths"]))
    want = torch.stack([alone(model, tokenizer, p, 8) for p in pairs])
    assert torch.allclose(got, want, atol=1e-5)


def test_unpack_by_hand() -> None:
    tokens = torch.arange(10.0).reshape(5, 2)
    hidden, mask = unpack(tokens, torch.tensor([2, 0, 3]), 4)
    assert mask.tolist() == [[True, True, False, False], [False] * 4, [True, True, True, False]]
    assert hidden[0, :2].tolist() == [[0, 1], [2, 3]] and hidden[2, :3].flatten().tolist() == [
        4,
        5,
        6,
        7,
        8,
        9,
    ]
    assert float(hidden[~mask].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="shorter"):
        unpack(tokens, torch.tensor([2, 0, 3]), 2)
    with pytest.raises(ValueError, match="sum"):
        unpack(tokens, torch.tensor([2, 2]))


def test_top_layers_rejects_bad_inputs() -> None:
    top = TopLayers([torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="keys"):
        top({"hidden": torch.zeros(1, 2, 2)})
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        top((torch.zeros(1, 3, 2), torch.ones(1, 2)))
    with pytest.raises(TypeError, match="input"):
        top(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="at least one"):
        TopLayers([])


def _task(name: str, rule: Any, n: int, seed: int) -> TextTask:
    """A learnable toy task: random sentences of WORDS labelled by ``rule``."""
    rng = random.Random(seed)

    def split(size: int) -> TextSplit:
        texts = tuple(" ".join(rng.choices(WORDS[:11], k=rng.randint(2, 7))) for _ in range(size))
        return TextSplit(texts, torch.tensor([rule(t) for t in texts]))

    return TextTask(name, ("no", "yes"), split(n), split(n // 2), split(n // 2))


TASKS = [
    _task("positive", lambda t: int("good" in t.split() or "great" in t.split()), 64, 1),
    _task("question", lambda t: int("what" in t.split() or "who" in t.split()), 48, 2),
]


def _prepare(tiny: tuple[Any, Any], cache: Path, n: int = 1, **kw: Any) -> Any:
    return prepare_finetune(
        TASKS, cache, 16, n, 16, 2, 2.0, 0, load=lambda: tiny, model_name="tiny-bert", **kw
    )


@pytest.mark.slow
def test_cache_is_reused_and_keyed_by_the_layer_count(
    tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    model = tiny[0]
    calls = []
    hook = model.embeddings.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = _prepare(tiny, tmp_path)
        assert calls  # the encoder ran
        files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
        assert len(files) == 2 * 3 and all(
            f.startswith("tiny-bert-lower2-float16__") for f in files
        )
        calls.clear()
        second = _prepare(tiny, tmp_path)
        assert not calls  # every split read back from disk
        (x1, y1), (x2, y2) = next(iter(first.train)), next(iter(second.train))
        assert torch.equal(x1["hidden"], x2["hidden"]) and torch.equal(x1["mask"], x2["mask"])
        assert all(torch.equal(y1[t], y2[t]) for t in y1)
        _prepare(tiny, tmp_path, n=2)  # other layers below the top: other files
        assert calls and len(list(tmp_path.glob("*lower1-float16__*"))) == 6
    finally:
        hook.remove()
    # a cache file that does not fit its texts is recomputed, not trusted
    lower = LowerEncoder(model, tiny[1], 2, max_length=16)
    cache = HiddenStateCache(tmp_path)
    path = cache.path(lower, "positive", "train", TASKS[0].train.texts)
    from safetensors.torch import save_file

    save_file({"tokens": torch.zeros(3, 32), "lengths": torch.tensor([3])}, str(path))
    values = cache.get(lower, "positive", "train", TASKS[0].train.texts)
    assert cache.computed == 1 and values["lengths"].shape == (64,)


@pytest.mark.slow
def test_gradients_reach_only_the_top_layers_and_heads(
    tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    model = tiny[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = _prepare(tiny, tmp_path, n=2)
    net = data.model_factory()
    assert isinstance(net, EncoderTop)
    # exactly the two top layers (MiniLM's own tensors, copied) and the heads are trainable
    expected = top_state(model.state_dict(), LAYERS - 2, 2)
    layer_state = net.top.layers.state_dict()
    assert layer_state.keys() == {k[len("layers.") :] for k in expected}
    assert all(torch.equal(layer_state[k[len("layers.") :]], v) for k, v in expected.items())
    own = {id(p) for p in net.parameters()}
    assert not own & {id(p) for p in model.parameters()}
    n_params = sum(p.numel() for p in net.parameters())
    n_layers = sum(p.numel() for p in model.encoder.layer[1:].parameters())
    assert n_params == n_layers + sum(p.numel() for p in net.heads.parameters())

    x, targets = next(iter(data.train))
    assert not x["hidden"].requires_grad
    outputs, features = net(x, return_features=True)
    losses = manytask.task_losses([t.task() for t in TASKS], outputs, targets)
    manytask.backward(
        losses,
        manytask.make_balancer("mgda"),
        features=features,
        shared_params=net.shared_parameters(),
        mode="exact",
    )
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize(("balancer", "mode"), [("pcgrad", "exact"), ("mgda", "feature")])
def test_training_with_a_gradient_balancer_reduces_the_loss(
    tiny: tuple[Any, Any], tmp_path: Path, balancer: str, mode: str
) -> None:
    torch.manual_seed(0)
    data = _prepare(tiny, tmp_path)
    net = data.model_factory(hidden=(16,))
    tasks = [t.task() for t in TASKS]
    trainer = manytask.Trainer(
        net, tasks, balancer, mode=mode, progress=False, optimizer=net.optimizer_factory(1e-2, 3e-3)
    )
    start = trainer.evaluate(data.train)
    trainer.fit(data.train, epochs=8)
    end = trainer.evaluate(data.train)
    total = sum(r["loss"] for r in start.values())
    assert sum(r["loss"] for r in end.values()) < 0.7 * total, (start, end)


def test_optimizer_factory_gives_the_layers_their_own_rate() -> None:
    net = EncoderTop(
        [Task.binary("a"), Task.classification("b", 3)], [torch.nn.Linear(4, 4)], 4, hidden=(8,)
    )
    extra = torch.nn.Parameter(torch.zeros(2))  # a balancer's own parameter
    opt = net.optimizer_factory(1e-3, 1e-5)([*net.parameters(), extra])
    groups = {g["lr"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert groups[1e-5] == {id(p) for p in net.top.layers.parameters()}
    assert id(extra) in groups[1e-3] and len(groups[1e-3]) == len(list(net.parameters())) - 2 + 1
    with pytest.raises(ValueError, match="layers_lr"):
        net.optimizer_factory(1e-3, 0.0)


@pytest.mark.slow
def test_bad_layer_counts_are_clear_errors(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    for bad in (0, LAYERS + 1, -1, 1.0):
        with pytest.raises(ValueError, match=r"n_layers .* from 1 to 3"):
            _prepare(tiny, tmp_path, n=bad)
        with pytest.raises(ValueError, match="n_layers"):
            EncoderTop.from_encoder([Task.binary("a")], model, bad)
    with pytest.raises(ValueError, match="n_lower"):
        LowerEncoder(model, tokenizer, LAYERS)
    with pytest.raises(TypeError, match="BERT-style"):
        EncoderTop.from_encoder([Task.binary("a")], torch.nn.Linear(2, 2), 1)
    assert not list(tmp_path.glob("*"))  # refused before anything was encoded


def _dict_data(sizes: dict[str, int]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Per task: hidden rows (n, 3, 2) filled with the example's global id, mask (n, 3) whose
    first entry is the id too, so that a batch row shows where each key came from."""
    feats, labels, start = {}, {}, 0
    for task, n in sizes.items():
        ids = torch.arange(start, start + n, dtype=torch.float32)
        feats[task] = {
            "hidden": ids[:, None, None].expand(n, 3, 2).clone(),
            "mask": torch.stack([ids, torch.ones(n), torch.zeros(n)], 1),
        }
        labels[task] = torch.arange(n) % 2
        start += n
    return feats, labels


def test_mixed_and_stacked_batches_take_dict_inputs() -> None:
    feats, labels = _dict_data({"a": 10, "b": 7, "c": 5})
    batches = MixedTaskBatches(feats, labels, batch_size=6, tasks_per_batch=3, seed=0)
    offsets = {"a": 0, "b": 10, "c": 17}
    for x, targets in batches:
        assert x["hidden"].shape == (6, 3, 2) and x["mask"].shape == (6, 3)
        ids = x["mask"][:, 0]
        assert torch.equal(x["hidden"][:, 0, 0], ids)  # both keys from the same example
        for task, y in targets.items():
            rows = y >= 0
            local = ids[rows].long() - offsets[task]
            assert bool(((local >= 0) & (local < labels[task].shape[0])).all())
            assert torch.equal(y[rows], labels[task][local])
    x, targets = next(iter(stacked_batches(feats, labels, batch_size=100)))
    assert torch.equal(x["mask"][:, 0], torch.arange(22.0))
    assert torch.equal(
        targets["b"], torch.cat([torch.full((10,), -1), labels["b"], torch.full((5,), -1)])
    )
    bad = dict(feats, c={"hidden": feats["c"]["hidden"]})
    with pytest.raises(ValueError, match="task 'c'"):
        MixedTaskBatches(bad, labels, 6)
    short = dict(feats, c={"hidden": feats["c"]["hidden"], "mask": feats["c"]["mask"][:3]})
    with pytest.raises(ValueError, match="'mask'"):
        stacked_batches(short, labels, 6)
    with pytest.raises(TypeError, match="features"):
        stacked_batches(dict(feats, c={}), labels, 6)


@pytest.mark.slow  # transformers import
def test_top_layers_under_vmap_as_fisher_merging_runs_them(tiny: tuple[Any, Any]) -> None:
    # Per-sample gradients (Fisher merging) run the model under torch.func.vmap, where the
    # padding trim cannot take a data-dependent shape: it must fall back to no trimming and
    # give what the model gives each sample alone.
    from torch.func import functional_call, vmap

    model, tokenizer = tiny
    lower = LowerEncoder(model, tokenizer, LAYERS - 1, max_length=16, dtype=torch.float32)
    hidden, mask = unpack(**lower.encode(SENTENCES[:4]))
    packed = torch.cat([hidden, mask[..., None].float()], -1)
    top = top_of(model, 1)
    params = dict(top.named_parameters())
    with torch.no_grad():
        batched = vmap(lambda x: functional_call(top, params, (x.unsqueeze(0),))[0])(packed)
        alone_each = torch.cat([top(packed[i : i + 1]) for i in range(len(packed))])
    assert torch.allclose(batched, alone_each, atol=1e-5)
    merged = manytask.merging.fisher_merge(
        [top, copy.deepcopy(top)], [[(packed, torch.zeros(4, dtype=torch.long))]] * 2,
        max_batches=1, log_likelihood=lambda out, y: -out.pow(2).sum(-1))
    assert set(merged.state_dict) == set(top.state_dict())
