"""Streaming dense metrics against direct computations on random maps; dense losses."""

from __future__ import annotations

import decimal
import math
from decimal import Decimal

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score
from torch import Tensor

from manytask.dense import DenseTask, DepthMeter, FMeasureMeter, NormalMeter, SegmentationMeter


def test_segmentation_meter_matches_sklearn_and_honours_ignore_index() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 9, 7, generator=g)
    target = torch.randint(-1, 4, (3, 9, 7), generator=g)
    meter = SegmentationMeter(4, ignore_index=-1)
    for b in range(3):  # streamed one image at a time
        meter.update(logits[b:b + 1], target[b:b + 1])
    keep = target.reshape(-1) != -1
    y, p = target.reshape(-1)[keep].numpy(), logits.argmax(1).reshape(-1)[keep].numpy()
    cm = confusion_matrix(y, p, labels=range(4))
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    out = meter.compute()
    assert out["miou"] == pytest.approx(np.nanmean(iou))
    assert out["pixel_accuracy"] == pytest.approx((y == p).mean())


def test_depth_meter_matches_direct_computation_on_valid_pixels() -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 1, 8, 8, generator=g) * 5
    target[target < 1] = 0.0  # invalid pixels
    pred = target + torch.randn(2, 1, 8, 8, generator=g) * 0.5
    meter = DepthMeter()
    meter.update(pred[:1], target[:1])
    meter.update(pred[1:], target[1:])
    v = target > 0
    p, t = pred[v].double().numpy(), target[v].double().numpy()
    out = meter.compute()
    assert out["abs_err"] == pytest.approx(np.abs(p - t).mean())
    assert out["rel_err"] == pytest.approx((np.abs(p - t) / t).mean())
    ratio = np.where(p > 0, np.maximum(p / t, t / np.where(p > 0, p, 1)), np.inf)
    for i, key in enumerate(("delta1", "delta2", "delta3")):
        assert out[key] == pytest.approx((ratio < 1.25 ** (i + 1)).mean())


def test_normal_meter_matches_direct_angles_and_median() -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.nn.functional.normalize(torch.randn(2, 3, 6, 6, generator=g), dim=1)
    target[:, :, 0, 0] = 0.0  # invalid
    pred = target + 0.4 * torch.randn(2, 3, 6, 6, generator=g)
    meter = NormalMeter()
    meter.update(pred, target)
    t = target.movedim(1, -1).reshape(-1, 3).double()
    p = pred.movedim(1, -1).reshape(-1, 3).double()
    v = t.norm(dim=1) > 0
    cos = (torch.nn.functional.normalize(p[v], dim=1) * t[v]).sum(1).clamp(-1, 1)
    angle = np.degrees(np.arccos(cos.numpy()))
    out = meter.compute()
    assert out["mean_angle"] == pytest.approx(angle.mean())
    assert out["median_angle"] == pytest.approx(np.median(angle), abs=0.02)
    assert out["within_22.5"] == pytest.approx((angle < 22.5).mean())


def test_fmeasure_is_the_best_f1_over_thresholds() -> None:
    g = torch.Generator().manual_seed(3)
    target = (torch.rand(2, 1, 10, 10, generator=g) < 0.2).float()
    logits = 3 * (target - 0.5) + torch.randn(2, 1, 10, 10, generator=g)
    meter = FMeasureMeter(thresholds=19)
    meter.update(logits, target)
    prob = torch.sigmoid(logits.double()).reshape(-1).numpy()
    y = target.reshape(-1).numpy()
    best = max(f1_score(y, prob >= thr, zero_division=0)
               for thr in np.linspace(0, 1, 21)[1:-1])
    assert meter.compute()["max_f"] == pytest.approx(best)


def test_meters_merge_like_one_pass() -> None:
    g = torch.Generator().manual_seed(4)
    logits, target = torch.randn(4, 3, 5, 5, generator=g), torch.randint(0, 3, (4, 5, 5),
                                                                        generator=g)
    whole, a, b = SegmentationMeter(3), SegmentationMeter(3), SegmentationMeter(3)
    whole.update(logits, target)
    a.update(logits[:2], target[:2])
    b.update(logits[2:], target[2:])
    a.merge(b)
    assert a.compute() == whole.compute()


def test_dense_losses_use_valid_pixels_only() -> None:
    g = torch.Generator().manual_seed(5)
    depth = DenseTask.depth()
    out = torch.randn(2, 1, 4, 4, generator=g)
    tgt = torch.rand(2, 1, 4, 4, generator=g) + 0.5
    tgt[0, 0, 0, 0] = 0.0
    v = tgt > 0
    assert float(depth.loss(out, tgt)) == pytest.approx(float((out - tgt).abs()[v].mean()))
    assert depth.loss(out, torch.zeros_like(tgt)) is None

    normal = DenseTask.normal()
    n_out = torch.randn(1, 3, 2, 2, generator=g)
    n_tgt = torch.nn.functional.normalize(torch.randn(1, 3, 2, 2, generator=g), dim=1)
    n_tgt[..., 0, 0] = 0.0
    cos = (torch.nn.functional.normalize(n_out, dim=1) * n_tgt).sum(1)[n_tgt.norm(dim=1) > 0]
    assert float(normal.loss(n_out, n_tgt)) == pytest.approx(float(1 - cos.mean()))

    edge = DenseTask.edge()
    e_out = torch.randn(1, 1, 3, 3, generator=g)
    e_tgt = torch.tensor([[[[1.0, 0, 0], [0, 255, 0], [0, 0, 1]]]])
    valid = (e_tgt == 0) | (e_tgt == 1)
    y = e_tgt[valid]
    beta = 1 - float(y.sum()) / y.numel()          # HED: positives weighted by |Y-| / |Y|
    p = torch.sigmoid(e_out[valid])
    manual = -(beta * y * torch.log(p) + (1 - beta) * (1 - y) * torch.log(1 - p)).mean()
    assert float(edge.loss(e_out, e_tgt)) == pytest.approx(float(manual), rel=1e-5)

    seg = DenseTask.segmentation("semantic", 3)
    s_out = torch.randn(1, 3, 2, 2, generator=g)
    s_tgt = torch.tensor([[[0, -1], [2, 1]]])
    manual = torch.nn.functional.cross_entropy(s_out.permute(0, 2, 3, 1).reshape(-1, 3)[[0, 2, 3]],
                                               torch.tensor([0, 2, 1]))
    assert float(seg.loss(s_out, s_tgt)) == pytest.approx(float(manual), rel=1e-6)
    with pytest.raises(ValueError, match="class index lies outside"):
        seg.loss(s_out, torch.tensor([[[0, 3], [2, 1]]]))


def test_evaluate_dense_streams_and_equals_one_big_batch() -> None:
    from manytask.data.dense import DenseBatches, DenseData
    from manytask.dense import evaluate_dense
    from manytask.models.dense import DenseHardSharing, ResNetBackbone

    torch.manual_seed(0)
    tasks = [DenseTask.segmentation("semantic", 5), DenseTask.depth(), DenseTask.normal(),
             DenseTask.edge()]
    model = DenseHardSharing(tasks, ResNetBackbone((8, 12)), head_hidden=8)
    data = DenseData.scenes(6, 16)
    small = evaluate_dense(model, DenseBatches(data, 2), tasks)
    whole = evaluate_dense(model, DenseBatches(data, 6), tasks)
    for task in whole:
        for metric, value in whole[task].items():
            assert small[task][metric] == pytest.approx(value, rel=1e-6, abs=1e-9), (task, metric)
    assert model.training  # restored


def direct_threshold_counts(logits: Tensor, target: Tensor, thresholds: Tensor,
                            tolerance: int) -> Tensor:
    """Per threshold, by the definition: predictions are the valid pixels whose probability
    reaches it; a prediction is matched when a target edge lies within ``tolerance`` pixels,
    a target edge when a prediction does."""
    prob = torch.sigmoid(logits.double())
    valid, pos = (target == 0) | (target == 1), (target == 1).double()

    def dilate(m: Tensor) -> Tensor:
        k = 2 * tolerance + 1
        return torch.nn.functional.max_pool2d(m, k, stride=1, padding=tolerance)

    rows = []
    for thr in thresholds.tolist():
        pred = ((prob >= thr) & valid).double()
        rows.append(torch.stack([(pred * dilate(pos)).sum(), pred.sum(),
                                 (pos * dilate(pred)).sum(), pos.sum()]))
    return torch.stack(rows, 1)


@pytest.mark.parametrize("tolerance", [0, 1, 2])
def test_fmeasure_counts_equal_the_definition_at_every_threshold(tolerance: int) -> None:
    g = torch.Generator().manual_seed(6)
    target = (torch.rand(3, 1, 12, 12, generator=g) < 0.3).float()
    target[0, 0, 0, :4] = 255.0  # ignored
    logits = 2 * (target.clamp(max=1) - 0.5) + torch.randn(3, 1, 12, 12, generator=g)
    meter = FMeasureMeter(thresholds=9, tolerance=tolerance)
    meter.update(logits[:2], target[:2])
    meter.update(logits[2:], target[2:])
    expected = direct_threshold_counts(logits, target, meter.thresholds, tolerance)
    torch.testing.assert_close(meter.threshold_counts(), expected, rtol=0, atol=0)


def test_fmeasure_levels_are_exact_at_the_thresholds() -> None:
    # logits on, just below and just above every threshold's logit: a float32 (or even
    # float64) sigmoid would put some of them on the wrong side. The reference decides
    # sigmoid(x) >= k / 100, i.e. exp(x) (100 - k) >= k, in 60-digit decimal arithmetic.
    t = torch.arange(1, 100, dtype=torch.float64) / 100
    logit = torch.log(t / (1 - t)).float()
    x = torch.cat([logit, torch.nextafter(logit, torch.tensor(-1e9)),
                   torch.nextafter(logit, torch.tensor(1e9)),
                   torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -1e-45])])
    level = FMeasureMeter()._level(x)
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        exact = [0 if math.isnan(v) else sum(Decimal(v).exp() * (100 - k) >= k
                                             for k in range(1, 100))
                 for v in x.tolist()]
    assert level.tolist() == exact


def test_first_argmax_equals_torch_argmax_with_ties_and_infinities() -> None:
    from manytask.dense.metrics import first_argmax

    g = torch.Generator().manual_seed(7)
    logits = torch.randint(-2, 3, (4, 6, 5, 5), generator=g).float()  # many ties
    logits[0, 2, 0, 0] = float("inf")
    logits[0, 4, 0, 0] = float("inf")  # tie of +inf: the first wins
    logits[1, :, 1, 1] = -float("inf")  # all -inf: class 0
    logits[2, 3, 2, 2] = -float("inf")
    assert torch.equal(first_argmax(logits), logits.argmax(1))


def test_segmentation_ignore_index_inside_the_classes_and_bad_targets() -> None:
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 4, 6, 6, generator=g)
    target = torch.randint(0, 4, (2, 6, 6), generator=g)
    meter = SegmentationMeter(4, ignore_index=0)  # class 0 marks unlabelled pixels
    meter.update(logits, target)
    keep = target.reshape(-1) != 0
    y, p = target.reshape(-1)[keep].numpy(), logits.argmax(1).reshape(-1)[keep].numpy()
    np.testing.assert_array_equal(meter.confusion.numpy(), confusion_matrix(y, p, labels=range(4)))

    bad = SegmentationMeter(4, ignore_index=255)
    bad_target = target.to(torch.uint8)
    bad_target[0, 0, :2] = 255  # ignored
    bad_target[1, 0, 0] = 7  # outside the classes: reported, not counted
    bad.update(logits, bad_target)
    with pytest.raises(ValueError, match=r"outside \[0, 4\) at 1 pixels"):
        bad.compute()
    assert int(bad.confusion.sum()) == target.numel() - 3


def test_meters_leave_their_inputs_unchanged() -> None:
    g = torch.Generator().manual_seed(9)
    cases = [
        (SegmentationMeter(3), torch.randn(2, 3, 4, 4, generator=g),
         torch.randint(-1, 3, (2, 4, 4), generator=g)),
        (DepthMeter(), torch.randn(2, 1, 4, 4, generator=g), torch.rand(2, 1, 4, 4, generator=g)),
        (NormalMeter(), torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)),
        (FMeasureMeter(), torch.randn(2, 1, 4, 4, generator=g),
         (torch.rand(2, 1, 4, 4, generator=g) < 0.5).float()),
        (FMeasureMeter(tolerance=1), torch.randn(2, 1, 4, 4, generator=g),
         (torch.rand(2, 1, 4, 4, generator=g) < 0.5).float()),
    ]
    for meter, output, target in cases:
        before = output.clone(), target.clone()
        meter.update(output, target)
        assert torch.equal(output, before[0]) and torch.equal(target, before[1]), meter


def test_depth_meter_non_positive_predictions_and_nan_targets() -> None:
    target = torch.tensor([[1.0, 2.0, 0.0, float("nan"), 4.0]])
    pred = torch.tensor([[-1.0, 0.0, 5.0, 3.0, 4.5]])
    meter = DepthMeter()
    meter.update(pred, target)
    out = meter.compute()
    v = torch.tensor([True, True, False, False, True])  # 0 and NaN targets are invalid
    p, t = pred[0, v].double(), target[0, v].double()
    assert out["abs_err"] == pytest.approx(float((p - t).abs().mean()))
    assert out["rel_err"] == pytest.approx(float(((p - t).abs() / t).mean()))
    assert out["delta1"] == pytest.approx(1 / 3)  # only 4.5 vs 4: predictions <= 0 miss all
    assert out["delta3"] == pytest.approx(1 / 3)


def test_normal_angles_are_accurate_near_0_and_180_degrees_and_zero_predictions() -> None:
    # float32 arccos of the cosine would be off by up to ~0.03 degrees at these angles
    degrees = torch.tensor([0.003, 0.02, 0.5, 45.0, 90.0, 179.5, 179.99], dtype=torch.float64)
    rad = torch.deg2rad(degrees)
    target = torch.zeros(1, 3, 1, 8)
    target[0, 0] = 1.0
    pred = torch.zeros(1, 3, 1, 8)
    pred[0, 0, 0, :7] = torch.cos(rad).float()
    pred[0, 1, 0, :7] = torch.sin(rad).float()  # pixel 7: a zero prediction
    meter = NormalMeter()
    meter.update(pred, target)
    p = pred[0, :, 0].T.double()
    exact = torch.rad2deg(torch.atan2(p[:, 1].abs(), p[:, 0]))[:7]  # of the float32 inputs
    exact = torch.cat([exact, torch.tensor([90.0], dtype=torch.float64)])
    assert meter.compute()["mean_angle"] == pytest.approx(float(exact.mean()), abs=1e-6)
    from manytask.dense.metrics import vector_angle

    got = torch.rad2deg(vector_angle(pred, target)[0, 0].double())
    torch.testing.assert_close(got, exact, rtol=0, atol=2e-5)
