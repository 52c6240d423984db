"""Streaming metrics of dense prediction: running sums, never the whole evaluation set.

Each meter is updated batch by batch (:meth:`update`), holds a few sums in float64, merges
with another meter's sums (:meth:`merge`) or with every process's under ``torchrun``
(:meth:`sync`: one all-reduce of its state), and reports ``{metric: value}``
(:meth:`compute`). Each metric's direction is in :attr:`higher_is_better`, for Δm.

* segmentation: a confusion matrix; mIoU (mean over classes that occur in targets or
  predictions of ``TP / (TP + FP + FN)``) and pixel accuracy; ``ignore_index`` pixels skipped;
* depth (valid pixels: target > 0): mean absolute error, mean relative error ``|d - d*| / d*``,
  and the fractions with ``max(d / d*, d* / d) < 1.25, 1.25^2, 1.25^3``;
* normals (valid pixels: target of non-zero norm): angle between the normalised prediction and
  the target, in degrees: mean, median (from a histogram of 0.01-degree bins, so exact to
  0.01 degree), and the fractions within 11.25, 22.5 and 30 degrees;
* edges and saliency: the F-measure ``(1 + b^2) P R / (b^2 P + R)`` maximised over fixed
  thresholds of the predicted probability, with counts summed over the whole set (the
  "optimal dataset scale" F; ``b^2 = 1`` for edges, ``0.3`` for saliency as in the saliency
  literature). Edges may be matched within ``tolerance`` pixels (a max-pool dilation of the
  other map): an approximation of the BSDS benchmark's bipartite matching, stated as such.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor


class Meter:
    """Running sums with merge/sync; subclasses define ``_state`` tensors and ``compute``."""

    higher_is_better: ClassVar[dict[str, bool]] = {}
    _names: tuple[str, ...] = ()

    def state(self) -> list[Tensor]:
        return [getattr(self, n) for n in self._names]

    def merge(self, other: Meter) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for mine, theirs in zip(self.state(), other.state(), strict=True):
            mine += theirs

    def sync(self, group: object = None) -> None:
        """Sum the state over the processes of ``group`` (every rank must call it)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for tensor in self.state():
                dist.all_reduce(tensor, group=group)

    def update(self, output: Tensor, target: Tensor) -> None:
        raise NotImplementedError  # abstract: every meter overrides it

    def compute(self) -> dict[str, float]:
        raise NotImplementedError  # abstract: every meter overrides it


class SegmentationMeter(Meter):
    higher_is_better: ClassVar[dict[str, bool]] = {"miou": True, "pixel_accuracy": True}
    _names = ("confusion",)

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)

    def update(self, logits: Tensor, target: Tensor) -> None:
        """``logits`` (B, C, H, W), ``target`` (B, H, W) class indices."""
        pred = logits.detach().argmax(1).reshape(-1).cpu()
        tgt = target.reshape(-1).cpu().long()
        keep = tgt != self.ignore_index
        tgt, pred = tgt[keep], pred[keep]
        if tgt.numel() and (int(tgt.min()) < 0 or int(tgt.max()) >= self.num_classes):
            raise ValueError(f"segmentation target holds a class outside [0, {self.num_classes})")
        idx = tgt * self.num_classes + pred
        self.confusion += torch.bincount(idx, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes).double()

    def compute(self) -> dict[str, float]:
        c = self.confusion
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        present = union > 0
        miou = float((tp[present] / union[present]).mean()) if bool(present.any()) else float("nan")
        total = float(c.sum())
        return {"miou": miou, "pixel_accuracy": float(tp.sum()) / total if total else float("nan")}


DEPTH_THRESHOLDS = (1.25, 1.25**2, 1.25**3)


class DepthMeter(Meter):
    higher_is_better: ClassVar[dict[str, bool]] = {
        "abs_err": False, "rel_err": False, "delta1": True, "delta2": True, "delta3": True}
    _names = ("sums",)

    def __init__(self) -> None:
        self.sums = torch.zeros(6, dtype=torch.float64)  # count, abs, rel, delta1..3

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` and ``target`` of one shape (B, 1, H, W) or (B, H, W); target 0 = invalid."""
        p = pred.detach().reshape(-1).double().cpu()
        t = target.reshape(-1).double().cpu()
        valid = t > 0
        p, t = p[valid], t[valid]
        err = (p - t).abs()
        with torch.no_grad():
            ratio = torch.where(p > 0, torch.maximum(p / t, t / p.clamp_min(1e-300)),
                                torch.full_like(p, float("inf")))
        self.sums += torch.stack([
            torch.tensor(float(t.numel()), dtype=torch.float64), err.sum(), (err / t).sum(),
            *[(ratio < thr).double().sum() for thr in DEPTH_THRESHOLDS]])

    def compute(self) -> dict[str, float]:
        n = float(self.sums[0])
        if n == 0:
            return dict.fromkeys(self.higher_is_better, float("nan"))
        s = (self.sums[1:] / n).tolist()
        return dict(zip(["abs_err", "rel_err", "delta1", "delta2", "delta3"], s, strict=True))


NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)
_BINS = 18000  # 0.01-degree bins over [0, 180]


class NormalMeter(Meter):
    higher_is_better: ClassVar[dict[str, bool]] = {
        "mean_angle": False, "median_angle": False,
        "within_11.25": True, "within_22.5": True, "within_30": True}
    _names = ("sums", "histogram")

    def __init__(self) -> None:
        self.sums = torch.zeros(5, dtype=torch.float64)  # count, sum, within x3
        self.histogram = torch.zeros(_BINS, dtype=torch.float64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``, ``target`` (B, 3, H, W); target of zero norm = invalid."""
        p, t = pred.detach().double().cpu(), target.double().cpu()
        # cos = p.t / (|p| |t|) from three channel sums: no per-pixel copies or normalised maps
        t_sq = (t * t).sum(1)
        valid = t_sq > 0
        dot, p_sq = (p * t).sum(1)[valid], (p * p).sum(1)[valid]
        cos = dot / torch.sqrt(p_sq * t_sq[valid]).clamp_min(1e-300)
        angle = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
        self.sums += torch.stack([
            torch.tensor(float(angle.numel()), dtype=torch.float64), angle.sum(),
            *[(angle < thr).double().sum() for thr in NORMAL_THRESHOLDS]])
        bins = (angle * (_BINS / 180.0)).long().clamp(0, _BINS - 1)
        self.histogram += torch.bincount(bins, minlength=_BINS).double()

    def compute(self) -> dict[str, float]:
        n = float(self.sums[0])
        if n == 0:
            return dict.fromkeys(self.higher_is_better, float("nan"))
        cumulative = torch.cumsum(self.histogram, 0)
        # the median of n values: the mean of those ranked (n - 1) // 2 and n // 2 (0-based)
        ranks = torch.tensor([(n - 1) // 2 + 1, n // 2 + 1], dtype=torch.float64)
        bins = torch.searchsorted(cumulative, ranks).double()
        return {
            "mean_angle": float(self.sums[1]) / n,
            "median_angle": float((bins.mean() + 0.5) * 180.0 / _BINS),
            "within_11.25": float(self.sums[2]) / n,
            "within_22.5": float(self.sums[3]) / n,
            "within_30": float(self.sums[4]) / n,
        }


class FMeasureMeter(Meter):
    """Dataset-level F-measure maximised over thresholds (edges: b^2 = 1; saliency: 0.3)."""

    higher_is_better: ClassVar[dict[str, bool]] = {"max_f": True}
    _names = ("counts",)

    def __init__(self, beta2: float = 1.0, thresholds: int = 99, tolerance: int = 0) -> None:
        self.beta2, self.tolerance = beta2, tolerance
        self.thresholds = torch.linspace(0, 1, thresholds + 2, dtype=torch.float64)[1:-1]
        # per threshold: matched predictions, predictions, matched targets, targets
        self.counts = torch.zeros(4, thresholds, dtype=torch.float64)

    def update(self, logits: Tensor, target: Tensor) -> None:
        """``logits`` (B, 1, H, W) of the positive class, ``target`` 0/1 of the same shape;
        other target values (e.g. 255 or NaN) are ignored."""
        prob = torch.sigmoid(logits.detach().double().cpu()).reshape(-1, 1, *logits.shape[-2:])
        tgt = target.double().cpu().reshape(prob.shape)
        valid = (tgt == 0) | (tgt == 1)
        pos = (tgt == 1).double()
        if self.tolerance == 0:  # counts at every threshold from two histograms, in one pass
            self._count_by_histogram(prob[valid], pos[valid])
            return
        near_pos = _dilate(pos, self.tolerance)
        for i, thr in enumerate(self.thresholds.tolist()):
            pred = ((prob >= thr) & valid).double()
            near_pred = _dilate(pred, self.tolerance)
            self.counts[:, i] += torch.stack([(pred * near_pos).sum(), pred.sum(),
                                              (pos * near_pred).sum(), pos.sum()])

    def _count_by_histogram(self, prob: Tensor, pos: Tensor) -> None:
        # bucket b holds probabilities in [thr_b, thr_{b+1}); "prob >= thr_i" is then the sum
        # of the buckets from i up, so suffix sums of two bincounts give every threshold's TP
        # and predicted-positive counts
        bucket = torch.searchsorted(self.thresholds, prob, right=True)
        n = len(self.thresholds) + 1
        every = torch.bincount(bucket, minlength=n).double()
        positive = torch.bincount(bucket, weights=pos, minlength=n).double()
        n_pred = every.flip(0).cumsum(0).flip(0)[1:]
        true_pos = positive.flip(0).cumsum(0).flip(0)[1:]
        total_pos = pos.sum().expand_as(true_pos)
        self.counts += torch.stack([true_pos, n_pred, true_pos, total_pos])

    def compute(self) -> dict[str, float]:
        matched_p, n_pred, matched_t, n_true = self.counts
        precision = torch.where(n_pred > 0, matched_p / n_pred.clamp_min(1), 0.0)
        recall = torch.where(n_true > 0, matched_t / n_true.clamp_min(1), 0.0)
        denom = self.beta2 * precision + recall
        f = torch.where(denom > 0, (1 + self.beta2) * precision * recall / denom.clamp_min(1e-300),
                        0.0)
        return {"max_f": float(f.max()) if f.numel() else float("nan")}


def _dilate(mask: Tensor, radius: int) -> Tensor:
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)
