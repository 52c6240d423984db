"""The F-measure of edges and saliency, streaming: histograms of threshold levels.

See :mod:`manytask.dense.metrics` for the meters' common interface and how their updates
stay cheap.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .metrics import Meter, count_into


class FMeasureMeter(Meter):
    """Dataset-level F-measure maximised over the thresholds ``k / (thresholds + 1)``,
    ``k = 1 .. thresholds`` (edges: b^2 = 1; saliency: 0.3).

    A pixel's *level* is the number of thresholds its probability reaches, so "predicted at
    threshold k" is "level >= k" and every threshold's counts are suffix sums of histograms of
    levels: of the valid pixels (predictions), of the valid pixels near a target edge (matched
    predictions) and of the target pixels by the best level within ``tolerance`` (matched
    targets; at tolerance 0 the target pixels' own levels)."""

    higher_is_better: ClassVar[dict[str, bool]] = {"max_f": True}

    def __init__(self, beta2: float = 1.0, thresholds: int = 99, tolerance: int = 0) -> None:
        if thresholds < 1 or tolerance < 0:
            raise ValueError(f"FMeasureMeter: needs thresholds >= 1 and tolerance >= 0, got "
                             f"{thresholds} and {tolerance}")
        self.beta2, self.tolerance, self.num_thresholds = beta2, tolerance, thresholds
        k = torch.arange(1, thresholds + 1, dtype=torch.float64)
        self.thresholds = k / (thresholds + 1)
        self.edges = _level_edges(self.thresholds)
        width = thresholds + 1
        # levels 0..T of valid pixels far from target edges, of valid pixels near one, then
        # of the invalid pixels (two rows, unused)
        self.levels = torch.zeros(4 * width, dtype=torch.int64)
        # with a tolerance: levels of the target pixels' best neighbour, then of the rest
        self.best = torch.zeros(2 * width if tolerance else 0, dtype=torch.int64)
        self._names = ("levels", "best") if tolerance else ("levels",)

    def update(self, logits: Tensor, target: Tensor) -> None:
        """``logits`` (B, 1, H, W) of the positive class, ``target`` 0/1 of the same shape;
        other target values (e.g. 255 or NaN) are ignored."""
        self._place(logits.device)
        if self.edges.device != logits.device:
            self.edges = self.edges.to(logits.device)
        x = logits.detach().float().reshape(-1, 1, *logits.shape[-2:])
        tgt = target.reshape(x.shape).float()
        pos = tgt.clone().eq_(1)  # 0/1
        invalid = tgt.clone().eq_(0).add_(pos).sub_(1).neg_()  # neither 0 nor 1
        width = self.num_thresholds + 1
        row = _dilate(pos, self.tolerance).add(invalid, alpha=2)
        count_into(self.levels, self._level(x).add_(row.mul_(width)).int())
        if self.tolerance:
            best = _dilate(x.masked_fill(invalid > 0, -math.inf), self.tolerance)
            count_into(self.best, self._level(best).add_((1 - pos).mul_(width)).int())

    def _level(self, x: Tensor) -> Tensor:
        """#{k : sigmoid(x) >= threshold_k} (as floats), exactly: a first guess from the
        float32 probability, corrected by comparing x with the logit-space edges around it."""
        guess = torch.sigmoid(x).mul_(self.num_thresholds + 1).int().clamp_(0, self.num_thresholds)
        flat = guess.reshape(-1)
        up = self.edges[1:].index_select(0, flat).reshape(x.shape).le_(x)  # x >= e_(g+1)
        down = self.edges.index_select(0, flat).reshape(x.shape).gt_(x)  # x < e_g
        return up.sub_(down).add_(guess)

    def threshold_counts(self) -> Tensor:
        """(4, T) float64: per threshold, matched predictions, predictions, matched targets,
        targets."""
        width = self.num_thresholds + 1
        far, near = self.levels[:2 * width].reshape(2, width).double().cpu()
        targets = self.best[:width].double().cpu() if self.tolerance else near
        at_least = torch.stack([far, near, targets]).flip(1).cumsum(1).flip(1)[:, 1:]
        matched_t = at_least[2]
        return torch.stack([at_least[1], at_least[0] + at_least[1], matched_t,
                            targets.sum().expand_as(matched_t)])

    def compute(self) -> dict[str, float]:
        matched_p, n_pred, matched_t, n_true = self.threshold_counts()
        precision = torch.where(n_pred > 0, matched_p / n_pred.clamp_min(1), 0.0)
        recall = torch.where(n_true > 0, matched_t / n_true.clamp_min(1), 0.0)
        denom = self.beta2 * precision + recall
        f = torch.where(denom > 0, (1 + self.beta2) * precision * recall / denom.clamp_min(1e-300),
                        0.0)
        return {"max_f": float(f.max())}


def _level_edges(thresholds: Tensor) -> Tensor:
    """[-inf, e_1 .. e_T, NaN] with e_k the least float32 whose sigmoid reaches threshold k:
    logit(t_k) rounded up to float32, so that x >= e_k <=> sigmoid(x) >= t_k for every float32
    x. The ends let a guess of 0 or T look one edge past either side: every x is >= -inf and
    none is >= NaN (not even +inf, whose level is T)."""
    logit = torch.log(thresholds / (1 - thresholds))
    edge = logit.float()
    edge = torch.where(edge.double() < logit, torch.nextafter(edge, torch.tensor(math.inf)), edge)
    return torch.cat([torch.tensor([-math.inf]), edge, torch.tensor([math.nan])])


def _dilate(x: Tensor, radius: int) -> Tensor:
    """The maximum over the (2 radius + 1)^2 window (a dilation for 0/1 maps)."""
    if radius <= 0:
        return x
    return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius)
