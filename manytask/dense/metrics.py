"""Streaming metrics of dense prediction: running sums, never the whole evaluation set.

Each meter is updated batch by batch (:meth:`update`), holds a few counts (int64) and sums
(float64), merges with another meter's (:meth:`merge`) or with every process's under
``torchrun`` (:meth:`sync`: one all-reduce per state tensor), and reports ``{metric: value}``
(:meth:`compute`). Each metric's direction is in :attr:`higher_is_better`, for Δm.

* segmentation: a confusion matrix; mIoU (mean over classes that occur in targets or
  predictions of ``TP / (TP + FP + FN)``) and pixel accuracy; ``ignore_index`` pixels skipped;
* depth (valid pixels: target > 0): mean absolute error, mean relative error ``|d - d*| / d*``,
  and the fractions with ``max(d / d*, d* / d) < 1.25, 1.25^2, 1.25^3``;
* normals (valid pixels: target of non-zero norm): angle between the prediction and the
  target, in degrees: mean, median (from a histogram of 0.01-degree bins, so exact to
  0.01 degree), and the fractions within 11.25, 22.5 and 30 degrees (bin edges of that
  histogram, so read from it exactly);
* edges and saliency (in :mod:`.fmeasure`): the F-measure ``(1 + b^2) P R / (b^2 P + R)``
  maximised over fixed thresholds of the predicted probability, with counts summed over the
  whole set (the "optimal dataset scale" F; ``b^2 = 1`` for edges, ``0.3`` for saliency as in
  the saliency literature). Edges may be matched within ``tolerance`` pixels (a max-pool
  dilation of the other map): an approximation of the BSDS benchmark's bipartite matching,
  stated as such.

How the updates stay cheap (their share of evaluation time is measured by
``benchmarks/dense_metrics_cost.py``): every pixel becomes one bin index, the pixels to skip
going to bins that are never read, and one count per batch fills the confusion matrix, the
depth ratios' bands, the normal-angle histogram or the F-measure's histogram of threshold
levels. There is no boolean indexing, no loop over thresholds, classes or pixels, no
``torch.where`` or ``argmax`` over channels (both slow strided loops on the CPU), and
comparisons are written in place into float or integer maps (``x.clone().lt_(v)``), which
costs a fifth of a comparison into a bool map on the CPU. Nothing is read back to the host
during :meth:`update` (no ``.item()``; counts by ``bincount`` on the CPU, by a scatter-add
on accelerators, where ``bincount`` reads the maximum back), and the state follows the
outputs' device. Targets outside the classes are counted and reported by :meth:`compute`,
on every process alike under ``torchrun``. Per-pixel arithmetic is float32 (angles from
``atan2`` of the cross and dot products, within ~1e-5 degrees at every angle, where float32
``arccos`` is off by up to 0.03 degrees near 0); sums are accumulated in float64. A
non-finite prediction makes the depth and normal means NaN, even on an invalid pixel.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor


class Meter:
    """Running sums with merge/sync; subclasses define ``_names`` (state tensors), ``update``
    and ``compute``."""

    higher_is_better: ClassVar[dict[str, bool]] = {}
    _names: tuple[str, ...] = ()

    def state(self) -> list[Tensor]:
        return [getattr(self, n) for n in self._names]

    def _place(self, device: torch.device) -> None:
        """Keep the state where the outputs are, so updates never copy maps to the host."""
        for name in self._names:
            tensor = getattr(self, name)
            if tensor.device != device:
                setattr(self, name, tensor.to(device))

    def merge(self, other: Meter) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for mine, theirs in zip(self.state(), other.state(), strict=True):
            if mine.shape != theirs.shape:
                raise ValueError(f"cannot merge {type(self).__name__}s of different settings")
            mine += theirs.to(mine.device)

    def sync(self, group: Any = None) -> None:
        """Sum the state over the processes of ``group`` (every rank must call it)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            if dist.get_backend(group) == "nccl" and torch.cuda.is_available():
                self._place(torch.device("cuda", torch.cuda.current_device()))
            for tensor in self.state():
                dist.all_reduce(tensor, group=group)

    def update(self, output: Tensor, target: Tensor) -> None:
        raise NotImplementedError  # abstract: every meter overrides it

    def compute(self) -> dict[str, float]:
        raise NotImplementedError  # abstract: every meter overrides it


def count_into(counts: Tensor, index: Tensor) -> None:
    """``counts[i] += #{index == i}``, ``index`` holding integers in ``[0, len(counts))``:
    ``bincount`` on the CPU; a scatter-add elsewhere, as ``bincount`` on an accelerator reads
    the index's maximum back to the host."""
    index = index.reshape(-1)
    if counts.device.type == "cpu":
        counts += torch.bincount(index, minlength=counts.numel())
    else:
        ones = torch.ones((), dtype=counts.dtype, device=counts.device).expand(index.shape)
        counts.index_add_(0, index, ones)


def first_argmax(logits: Tensor) -> Tensor:
    """``logits.argmax(1)`` for (B, C, H, W) float32 maps, ties to the first maximal channel
    (a pixel with a NaN logit gets class 0): the least ``c + C [logit_c < max]``. Argmax over a
    non-last dimension is a slow strided loop on the CPU (tens of times slower here)."""
    num = logits.shape[1]
    below = (logits - logits.amax(1, keepdim=True)).lt_(0)  # +inf - +inf is NaN: not below
    channel = torch.arange(num, dtype=below.dtype, device=below.device).view(1, num, 1, 1)
    return below.mul_(num).add_(channel).amin(1).long()


class SegmentationMeter(Meter):
    higher_is_better: ClassVar[dict[str, bool]] = {"miou": True, "pixel_accuracy": True}
    _names = ("counts",)

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        # rows (target) x columns (prediction): targets < 0, the C classes, targets >= C; then
        # as many bins again for the ignored pixels
        self.counts = torch.zeros(2 * (num_classes + 2) * num_classes, dtype=torch.int64)

    @property
    def confusion(self) -> Tensor:
        """The C x C confusion matrix (row = target, column = prediction)."""
        c = self.num_classes
        return self.counts[c:c + c * c].reshape(c, c)

    def update(self, logits: Tensor, target: Tensor) -> None:
        """``logits`` (B, C, H, W), ``target`` (B, H, W) class indices."""
        self._place(logits.device)
        c = self.num_classes
        pred = first_argmax(logits.detach().float())
        tgt = target.reshape(pred.shape).long()
        row = tgt.clamp(-1, c).add_(1)  # 0: below the classes, 1 .. C: a class, C + 1: above
        ignored = tgt.clone().eq_(self.ignore_index).mul_((c + 2) * c)  # to the second half
        count_into(self.counts, torch.add(pred, row, alpha=c).add_(ignored))

    def compute(self) -> dict[str, float]:
        c = self.num_classes
        bad = int(self.counts[:c].sum() + self.counts[c + c * c:(c + 2) * c].sum())
        if bad:
            raise ValueError(f"segmentation target holds a class outside [0, {self.num_classes}) "
                             f"at {bad} pixels (not the ignore index {self.ignore_index})")
        cm = self.confusion.double().cpu()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        miou = float((tp[present] / union[present]).mean()) if bool(present.any()) else float("nan")
        total = float(cm.sum())
        return {"miou": miou, "pixel_accuracy": float(tp.sum()) / total if total else float("nan")}


DEPTH_THRESHOLDS = (1.25, 1.25**2, 1.25**3)
_TINY = 1e-45  # the least positive float32: stands in for depths <= 0 in divisions


class DepthMeter(Meter):
    higher_is_better: ClassVar[dict[str, bool]] = {
        "abs_err": False, "rel_err": False, "delta1": True, "delta2": True, "delta3": True}
    _names = ("sums", "bands")

    def __init__(self) -> None:
        self.sums = torch.zeros(2, dtype=torch.float64)  # sum of |d - d*|, of |d - d*| / d*
        # valid pixels by how many thresholds max(d/d*, d*/d) stays below (0..3), then the
        # invalid pixels (bins 4..7, unused)
        self.bands = torch.zeros(8, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` and ``target`` of one shape (B, 1, H, W) or (B, H, W); target 0 = invalid.
        A non-finite prediction makes the means NaN, even on an invalid pixel."""
        self._place(pred.device)
        p = pred.detach().reshape(-1).float()
        t = target.reshape(-1).float()
        valid = t.clone().gt_(0)  # 0/1; NaN targets are invalid too
        t = t.nan_to_num(0.0).clamp_min_(_TINY)  # valid depths unchanged; no division by 0
        err = (p - t).abs_().mul_(valid)  # 0 on invalid pixels, so err / t is 0 there too
        self.sums += torch.stack([err.sum(dtype=torch.float64),
                                  err.div_(t).sum(dtype=torch.float64)])
        # a prediction <= 0 (or NaN) gets an infinite (NaN) ratio: below no threshold
        ratio = torch.maximum(p / t, t / p.clamp_min(_TINY))
        below = torch.zeros_like(ratio)
        for thr in DEPTH_THRESHOLDS:
            below += ratio.clone().lt_(thr)
        count_into(self.bands, below.add_(valid.sub_(1).mul_(-4)).long())

    def compute(self) -> dict[str, float]:
        bands = self.bands[:4].double().cpu()
        n = float(bands.sum())
        if n == 0:
            return dict.fromkeys(self.higher_is_better, float("nan"))
        abs_err, rel_err = (self.sums.cpu() / n).tolist()
        # below threshold j: below at least 3 - j of them
        within = (bands.flip(0).cumsum(0)[:len(DEPTH_THRESHOLDS)] / n).tolist()
        return {"abs_err": abs_err, "rel_err": rel_err, "delta1": within[0],
                "delta2": within[1], "delta3": within[2]}


NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)
_BINS = 18000  # 0.01-degree bins over [0, 180]
_PER_DEGREE = _BINS / 180.0


def vector_angle(p: Tensor, t: Tensor) -> Tensor:
    """Angle in radians between the 3-vectors along dim 1 of ``p`` and ``t``:
    ``atan2(|p x t|, p . t)``, accurate at every angle in float32 (``arccos`` of the cosine
    loses half the digits near 0 and 180 degrees). A zero vector makes 90 degrees, the angle
    the loss's ``cos = 0`` of a zero prediction implies."""
    px, py, pz = p.unbind(1)
    tx, ty, tz = t.unbind(1)
    sine_sq = (py * tz - pz * ty).square_()
    sine_sq.add_((pz * tx - px * tz).square_()).add_((px * ty - py * tx).square_())
    sine, cosine = sine_sq.sqrt_(), (px * tx).addcmul_(py, ty).addcmul_(pz, tz)
    both_zero = (sine + cosine.abs()).eq_(0)
    return torch.atan2(sine, cosine).add_(both_zero.mul_(math.pi / 2))


class NormalMeter(Meter):
    higher_is_better: ClassVar[dict[str, bool]] = {
        "mean_angle": False, "median_angle": False,
        "within_11.25": True, "within_22.5": True, "within_30": True}
    _names = ("angle_sum", "histogram")

    def __init__(self) -> None:
        self.angle_sum = torch.zeros(1, dtype=torch.float64)  # degrees, valid pixels
        # 0.01-degree bins over [0, 180] of the valid pixels, then the invalid pixels
        self.histogram = torch.zeros(_BINS + 1, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``, ``target`` (B, 3, H, W); target of zero norm = invalid. A non-finite
        prediction makes the mean NaN, even on an invalid pixel."""
        self._place(pred.device)
        p, t = pred.detach().float(), target.float()
        tx, ty, tz = t.unbind(1)
        valid = (tx * tx).addcmul_(ty, ty).addcmul_(tz, tz).gt_(0)  # 0/1
        degrees = vector_angle(p, t).mul_(180.0 / math.pi)
        self.angle_sum += (degrees * valid).sum(dtype=torch.float64)
        bins = degrees.mul_(_PER_DEGREE).int().clamp_(0, _BINS - 1)  # 180 degrees: last bin
        # valid: its bin; invalid: bin _BINS
        count_into(self.histogram, bins.sub_(_BINS).mul_(valid.int()).add_(_BINS))

    def compute(self) -> dict[str, float]:
        histogram = self.histogram[:_BINS].double().cpu()
        n = float(histogram.sum())
        if n == 0:
            return dict.fromkeys(self.higher_is_better, float("nan"))
        cumulative = torch.cumsum(histogram, 0)
        # the median of n values: the mean of those ranked (n - 1) // 2 and n // 2 (0-based)
        ranks = torch.tensor([(n - 1) // 2 + 1, n // 2 + 1], dtype=torch.float64)
        bins = torch.searchsorted(cumulative, ranks).double()
        # each threshold is a bin edge: the pixels below it fill the bins before it
        within = [float(cumulative[round(thr * _PER_DEGREE) - 1]) / n for thr in NORMAL_THRESHOLDS]
        return {
            "mean_angle": float(self.angle_sum[0]) / n,
            "median_angle": float((bins.mean() + 0.5) / _PER_DEGREE),
            "within_11.25": within[0],
            "within_22.5": within[1],
            "within_30": within[2],
        }
