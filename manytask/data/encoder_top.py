"""Fine-tuning the top layers of a sentence encoder (all-MiniLM-L6-v2) on cached lower layers.

The frozen path (:mod:`manytask.data.encoders`) caches one sentence embedding per text. Here the
top ``n`` transformer layers are trained too, jointly for all tasks, as in the usual recipe of
fine-tuning only the upper layers of BERT (Sun, Qiu, Xu and Huang, "How to Fine-Tune BERT for
Text Classification?", CCL 2019, Section 5.3; Devlin et al., NAACL 2019, for the encoder). The
layers below never change, so their output is computed once per sentence and cached:

* :class:`LowerEncoder` runs the embeddings and the lower ``L - n`` layers of a BERT-style
  ``transformers`` model and returns the token-level hidden states of the real (unpadded)
  tokens, ragged: ``tokens`` (T, H) and ``lengths`` (N,), so padding takes no disk space.
* :class:`HiddenStateCache` keeps them on disk in float16 (half the bytes of float32), one
  safetensors file per (model, lower layer count, dtype, task, split, max_length, texts hash);
  the file names add ``-lower<k>-<dtype>`` to the model name, so they never collide with the
  frozen sentence embeddings of :class:`~manytask.data.encoders.EmbeddingCache`.
* :class:`TopLayers` is the shared part of :class:`EncoderTop`: copies of the top ``n`` layers
  initialised from the encoder's weights, then the attention-masked mean over tokens and L2
  normalisation (Sentence-BERT's MEAN pooling, Reimers and Gurevych, EMNLP 2019, Section 3,
  exactly what the frozen path embeds), then an optional MLP trunk. With the trunk left out
  and before any training, it reproduces the frozen embedding of every sentence.
* :class:`EncoderTop` is a :class:`~manytask.models.MultiTaskModel`: the heads read the pooled
  (or trunk) features, so every balancer runs on it, in ``exact`` and ``feature`` mode.
* :func:`prepare_finetune` builds everything for the text tasks: the model factory, mixed
  training batches (:class:`~manytask.data.text.MixedTaskBatches` over
  ``{"hidden": (N, L, H), "mask": (N, L)}`` inputs) and stacked validation and test batches.

Memory: the batches hold every split padded to the longest cached sentence, ``N x L x H``
float16 numbers (1,000 sentences of up to 64 tokens at H = 384: 49 MB).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..models.base import MultiTaskModel, mlp
from ..tasks import Task
from .encoders import (
    MINILM,
    EmbeddingCache,
    SentenceEncoder,
    length_order,
    load_minilm,
    mean_pool,
    save_atomic,
)
from .text import MixedTaskBatches, Text, TextTask, stacked_batches

SPLITS = ("train", "val", "test")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_top_layers(n_layers: Any, total: int, owner: str) -> int:
    """``n_layers`` if it is an integer in ``[1, total]``, else a ``ValueError`` naming it."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= total:
        raise ValueError(
            f"{owner}: n_layers (the top layers to fine-tune) must be an integer from 1 to "
            f"{total}, the encoder's number of layers; got {n_layers!r}"
        )
    return n_layers


def encoder_layers(model: Any, owner: str) -> nn.ModuleList:
    """The transformer layers of a BERT-style ``transformers`` model (``model.encoder.layer``)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(model, "embeddings"):
        raise TypeError(
            f"{owner}: expected a BERT-style transformers model with .embeddings and "
            f".encoder.layer, got {type(model).__name__}"
        )
    return layers


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, L) 0/1 attention mask -> the (B, 1, 1, L) additive mask BERT layers take: 0 where a
    token may be attended to, the most negative finite number where not (its softmax weight
    underflows to exactly 0, so padding never changes the real tokens' states)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def run_layers(layers: Iterable[nn.Module], hidden: Tensor, mask: Tensor) -> Tensor:
    """``hidden`` (B, L, H) through ``layers`` in turn, attending only where ``mask`` is 1."""
    ext = additive_mask(mask, hidden.dtype)
    for layer in layers:
        out = layer(hidden, attention_mask=ext)
        # transformers < 5 returns a tuple (hidden, attentions...), 5 the tensor itself
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def unpack(tokens: Tensor, lengths: Tensor, length: int | None = None) -> tuple[Tensor, Tensor]:
    """Ragged ``tokens`` (T, H) of sentences of ``lengths`` (N,) -> right-padded ``hidden``
    (N, length, H) (zeros on padding) and boolean ``mask`` (N, length)."""
    if tokens.dim() != 2 or lengths.dim() != 1 or int(lengths.sum()) != tokens.shape[0]:
        raise ValueError(
            f"unpack: tokens {tuple(tokens.shape)} do not hold sum(lengths) = "
            f"{int(lengths.sum())} rows for {lengths.shape[0]} sentences"
        )
    longest = int(lengths.max()) if lengths.numel() else 0
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"unpack: length {length} is shorter than the longest sentence {longest}")
    mask = torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]
    hidden = tokens.new_zeros(lengths.shape[0], length, tokens.shape[1])
    hidden[mask] = tokens  # row-major: each sentence's tokens in order, as packed
    return hidden, mask


class LowerEncoder:
    """The frozen lower part of a BERT-style encoder: embeddings and the first ``n_lower``
    layers, run once per sentence under ``torch.no_grad``.

    Args:
        model: a ``transformers`` BERT-style model (``.embeddings``, ``.encoder.layer``).
        tokenizer: its tokenizer (right padding).
        n_lower: layers to run after the embeddings (0: the embeddings alone).
        max_length: tokens per text after truncation (pairs: both sentences together).
        batch_size: texts per forward pass (sorted by length, so batches pad little).
        dtype: dtype of the returned (and cached) hidden states.
        name: the model's name in cache keys.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        n_lower: int,
        *,
        max_length: int = 64,
        batch_size: int = 64,
        dtype: torch.dtype = torch.float16,
        name: str = MINILM,
    ) -> None:
        layers = encoder_layers(model, "LowerEncoder")
        if (
            isinstance(n_lower, bool)
            or not isinstance(n_lower, int)
            or not 0 <= n_lower < len(layers)
        ):
            raise ValueError(
                f"LowerEncoder: n_lower must be an integer from 0 to {len(layers) - 1} (at least "
                f"one of the {len(layers)} layers stays on top), got {n_lower!r}"
            )
        if not dtype.is_floating_point:
            raise TypeError(f"LowerEncoder: dtype must be a floating dtype, got {dtype}")
        # the SentenceEncoder validates max_length, batch_size and the texts, and tokenizes
        self.sentences = SentenceEncoder(
            model, tokenizer, max_length=max_length, batch_size=batch_size, name=name
        )
        self.model = model
        self.n_lower = n_lower
        self.dtype = dtype

    @property
    def max_length(self) -> int:
        return self.sentences.max_length

    @property
    def key(self) -> str:
        """The cache's model key: the name, the layers run and the stored dtype."""
        return f"{self.sentences.name}-lower{self.n_lower}-{_dtype_name(self.dtype)}"

    def hidden(self, tokens: Mapping[str, Tensor]) -> Tensor:
        """Hidden states (B, L, H) after the lower layers for one tokenized batch."""
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        types = tokens.get("token_type_ids")
        embedded = self.model.embeddings(
            input_ids=ids, token_type_ids=torch.zeros_like(ids) if types is None else types
        )
        return run_layers(
            encoder_layers(self.model, "LowerEncoder")[: self.n_lower], embedded, mask
        )

    @torch.no_grad()
    def encode(self, texts: Sequence[Text]) -> dict[str, Tensor]:
        """``{"tokens": (T, H), "lengths": (N,)}``: the real tokens' hidden states of every
        text, in the order of ``texts``, concatenated (``T = lengths.sum()``)."""
        if len(texts) == 0:
            raise ValueError("LowerEncoder.encode: no texts")
        self.model.eval()
        order = length_order(texts)
        ordered = [texts[i] for i in order.tolist()]
        parts, part_lengths = [], []
        for start in range(0, len(ordered), self.sentences.batch_size):
            tokens = self.sentences.tokenize(ordered[start : start + self.sentences.batch_size])
            mask = tokens["attention_mask"].bool()
            lengths = mask.sum(1)
            if not torch.equal(mask, torch.arange(mask.shape[1])[None, :] < lengths[:, None]):
                raise ValueError("LowerEncoder: the tokenizer must pad on the right")
            parts.append(self.hidden(tokens)[mask].to(self.dtype))
            part_lengths.append(lengths)
        sorted_tokens, sorted_lengths = torch.cat(parts), torch.cat(part_lengths)
        # back to the order of `texts`: gather each sentence's run of rows
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.shape[0])
        lengths = sorted_lengths[inverse]
        sorted_starts = torch.cumsum(sorted_lengths, 0) - sorted_lengths
        starts = torch.cumsum(lengths, 0) - lengths
        offset = torch.arange(int(lengths.sum())) - torch.repeat_interleave(starts, lengths)
        rows = torch.repeat_interleave(sorted_starts[inverse], lengths) + offset
        return {"tokens": sorted_tokens[rows], "lengths": lengths}


class HiddenStateCache:
    """:class:`LowerEncoder` outputs on disk, one safetensors file per (encoder key, task,
    split, max_length, texts), named as :class:`~manytask.data.encoders.EmbeddingCache` names
    its files. ``computed`` counts the splits this object had to encode."""

    def __init__(self, directory: str | Path) -> None:
        self.keys = EmbeddingCache(directory)
        self.computed = 0

    @property
    def directory(self) -> Path:
        return self.keys.directory

    def path(self, encoder: LowerEncoder, task: str, split: str, texts: Sequence[Text]) -> Path:
        return self.keys.path(encoder.key, task, split, encoder.max_length, texts)

    def get(
        self, encoder: LowerEncoder, task: str, split: str, texts: Sequence[Text]
    ) -> dict[str, Tensor]:
        """The stored ``{"tokens", "lengths"}`` of ``texts`` or, if absent, encoded and stored."""
        from safetensors.torch import load_file

        path = self.path(encoder, task, split, texts)
        if path.exists():
            stored = load_file(str(path))
            tokens, lengths = stored.get("tokens"), stored.get("lengths")
            # a file that does not fit (another writer's format, a truncated copy) is redone
            if (
                tokens is not None
                and lengths is not None
                and lengths.shape == (len(texts),)
                and int(lengths.sum()) == tokens.shape[0]
            ):
                return {"tokens": tokens, "lengths": lengths}
        values = encoder.encode(texts)
        self.computed += 1
        meta = {
            "model": encoder.sentences.name,
            "lower_layers": str(encoder.n_lower),
            "task": task,
            "split": split,
            "max_length": str(encoder.max_length),
        }
        save_atomic(values, path, meta)
        return values


class TopLayers(nn.Module):
    """The shared part of :class:`EncoderTop`: the top transformer layers, masked mean pooling
    (L2-normalised when ``normalize``, as the frozen embeddings are), then ``trunk`` if given.

    Input: ``{"hidden": (B, L, H), "mask": (B, L)}``, a pair ``(hidden, mask)``, or one tensor
    (B, L, H + 1) with the mask as the last channel (for callers that need a single tensor).
    Hidden states are cast to the layers' dtype (the cache holds float16), and positions past
    the batch's last real token are dropped first: padding costs no compute and, masked out,
    changes nothing.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        *,
        normalize: bool = True,
        trunk: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if len(layers) == 0:
            raise ValueError("TopLayers: needs at least one layer")
        self.layers = nn.ModuleList(layers)
        self.normalize = normalize
        self.trunk = trunk

    @staticmethod
    def split_input(x: Any) -> tuple[Tensor, Tensor]:
        """``(hidden, mask)`` from any of the accepted input layouts."""
        if isinstance(x, Mapping):
            if set(x) != {"hidden", "mask"}:
                raise ValueError(
                    f"TopLayers: input keys must be 'hidden' and 'mask', got {list(x)}"
                )
            hidden, mask = x["hidden"], x["mask"]
        elif isinstance(x, tuple | list) and len(x) == 2:
            hidden, mask = x
        elif isinstance(x, Tensor) and x.dim() == 3:
            hidden, mask = x[..., :-1], x[..., -1]
        else:
            raise TypeError(
                "TopLayers: input must be {'hidden', 'mask'}, (hidden, mask) or a packed "
                f"(B, L, H + 1) tensor, got {type(x).__name__}"
            )
        if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
            raise ValueError(
                f"TopLayers: hidden must be (B, L, H) and mask (B, L), got "
                f"{tuple(hidden.shape)} and {tuple(mask.shape)}"
            )
        return hidden, mask

    def forward(self, x: Any) -> Tensor:
        hidden, mask = self.split_input(x)
        try:
            used = torch.nonzero(mask.any(0))
            keep = int(used[-1, 0]) + 1 if used.numel() else 1
        except RuntimeError:
            # Inside torch.func.vmap (per-sample gradients, as Fisher merging takes them) a
            # shape cannot depend on the data: keep every position (padding is masked anyway).
            keep = mask.shape[1]
        dtype = next(self.layers.parameters()).dtype
        hidden = run_layers(self.layers, hidden[:, :keep].to(dtype), mask[:, :keep])
        pooled = mean_pool(hidden, mask[:, :keep], normalize=self.normalize)
        return pooled if self.trunk is None else self.trunk(pooled)


class EncoderTop(MultiTaskModel):
    """Top encoder layers shared by all tasks, one head per task.

    The features (what the heads read, and what ``feature`` mode differentiates) are the
    pooled, normalised sentence embeddings, or the trunk's output when ``hidden`` is given.

    Args:
        tasks: the tasks; each gets a head ending in ``task.out_features`` outputs.
        layers: the transformer layers to train (used as given: pass copies).
        width: their hidden size H.
        hidden: widths of an optional shared MLP trunk after pooling (none: no trunk).
        head_hidden: widths of each head's hidden layers (none: a linear head).
        normalize: L2-normalise the pooled embedding (the frozen path does).
        dropout: dropout after each hidden layer of the trunk.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        layers: Sequence[nn.Module],
        width: int,
        *,
        hidden: Sequence[int] = (),
        head_hidden: Sequence[int] = (),
        normalize: bool = True,
        dropout: float = 0.0,
    ) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"EncoderTop: width must be a positive integer, got {width!r}")
        trunk = mlp([width, *hidden], dropout=dropout) if hidden else None
        feature_dim = hidden[-1] if hidden else width
        heads = {
            t.name: mlp([feature_dim, *head_hidden, t.out_features], last_activation=False)
            for t in tasks
        }
        super().__init__(TopLayers(layers, normalize=normalize, trunk=trunk), heads)

    @classmethod
    def from_encoder(
        cls, tasks: Sequence[Task], model: Any, n_layers: int, **kwargs: Any
    ) -> EncoderTop:
        """Trainable copies of the top ``n_layers`` layers of ``model`` (left untouched)."""
        layers = encoder_layers(model, "EncoderTop.from_encoder")
        n = check_top_layers(n_layers, len(layers), "EncoderTop.from_encoder")
        copies = [copy.deepcopy(layer).requires_grad_(True) for layer in layers[len(layers) - n :]]
        return cls(tasks, copies, int(model.config.hidden_size), **kwargs)

    @property
    def top(self) -> TopLayers:
        if not isinstance(self.shared, TopLayers):  # only if someone replaced it
            raise TypeError(f"EncoderTop: shared part is a {type(self.shared).__name__}")
        return self.shared

    def optimizer_factory(
        self, lr: float, layers_lr: float
    ) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
        """A Trainer ``optimizer=``: Adam with ``layers_lr`` for the transformer layers and
        ``lr`` for every other parameter it is given (trunk, heads, a balancer's own)."""
        for key, value in (("lr", lr), ("layers_lr", layers_lr)):
            if not value > 0:
                raise ValueError(f"EncoderTop.optimizer_factory: {key} must be > 0, got {value}")
        in_layers = {id(p) for p in self.top.layers.parameters()}

        def make(params: list[nn.Parameter]) -> torch.optim.Optimizer:
            groups = [
                {"params": [p for p in params if id(p) in in_layers], "lr": layers_lr},
                {"params": [p for p in params if id(p) not in in_layers], "lr": lr},
            ]
            return torch.optim.Adam([g for g in groups if g["params"]], lr=lr)

        return make


def top_state(encoder_state: Mapping[str, Tensor], first: int, n_layers: int) -> dict[str, Tensor]:
    """The state dict of :class:`TopLayers` (no trunk) over layers ``first .. first + n - 1``,
    read out of a whole-encoder state dict (``encoder.layer.<i>.…`` keys)."""
    out = {}
    for j in range(n_layers):
        prefix = f"encoder.layer.{first + j}."
        for key, value in encoder_state.items():
            if key.startswith(prefix):
                out[f"layers.{j}.{key[len(prefix) :]}"] = value
    return out


class FinetuneData(NamedTuple):
    """What :func:`prepare_finetune` returns (unpacks as a 4-tuple)."""

    model_factory: Callable[..., EncoderTop]
    train: MixedTaskBatches
    val: Any
    test: Any


def prepare_finetune(
    text_tasks: Sequence[TextTask],
    cache_dir: str | Path,
    max_length: int,
    n_layers: int,
    batch_size: int,
    tasks_per_batch: int,
    temperature: float,
    seed: int,
    *,
    dtype: torch.dtype = torch.float16,
    load: Callable[[], tuple[Any, Any]] = load_minilm,
    model_name: str = MINILM,
    encode_batch_size: int = 64,
) -> FinetuneData:
    """Cached lower-layer states of every task split, batches, and a model factory.

    ``model_factory(**kwargs)`` returns a fresh :class:`EncoderTop` for the tasks, its layers
    copies of the encoder's top ``n_layers`` (keyword arguments go to :class:`EncoderTop`:
    ``hidden``, ``head_hidden``, ``normalize``, ``dropout``). ``train`` mixes
    ``tasks_per_batch`` tasks per batch (temperature sampling); ``val`` and ``test`` stack the
    tasks. ``load`` returns ``(model, tokenizer)`` (default: the bundled MiniLM, offline);
    states are cached in ``cache_dir`` in ``dtype``.
    """
    if not text_tasks:
        raise ValueError("prepare_finetune: no text tasks")
    names = [t.name for t in text_tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"prepare_finetune: task names repeat: {names}")
    model, tokenizer = load()
    total = len(encoder_layers(model, "prepare_finetune"))
    n = check_top_layers(n_layers, total, "prepare_finetune")
    lower = LowerEncoder(
        model,
        tokenizer,
        total - n,
        max_length=max_length,
        batch_size=encode_batch_size,
        dtype=dtype,
        name=model_name,
    )
    cache = HiddenStateCache(cache_dir)
    ragged = {
        t.name: {s: cache.get(lower, t.name, s, t.split(s).texts) for s in SPLITS}
        for t in text_tasks
    }
    # one padded length for all tasks: MixedTaskBatches concatenates their rows
    length = max(int(r[s]["lengths"].max()) for r in ragged.values() for s in SPLITS)
    inputs: dict[str, dict[str, Any]] = {s: {} for s in SPLITS}
    for name, splits in ragged.items():
        for s in SPLITS:
            hidden, mask = unpack(splits[s]["tokens"], splits[s]["lengths"], length)
            inputs[s][name] = {"hidden": hidden, "mask": mask}
    labels = {s: {t.name: t.split(s).labels for t in text_tasks} for s in SPLITS}
    tasks = [t.task() for t in text_tasks]
    layers = encoder_layers(model, "prepare_finetune")
    # keep only the top layers (not the whole encoder) alive in the factory
    top = [copy.deepcopy(layer) for layer in layers[total - n :]]
    width = int(model.config.hidden_size)

    def model_factory(**kwargs: Any) -> EncoderTop:
        fresh = [copy.deepcopy(layer).requires_grad_(True) for layer in top]
        return EncoderTop(tasks, fresh, width, **kwargs)

    train = MixedTaskBatches(
        inputs["train"],
        labels["train"],
        batch_size,
        tasks_per_batch=min(tasks_per_batch, len(tasks)),
        temperature=temperature,
        seed=seed,
    )
    return FinetuneData(
        model_factory,
        train,
        stacked_batches(inputs["val"], labels["val"], batch_size),
        stacked_batches(inputs["test"], labels["test"], batch_size),
    )
