"""Streaming dense metrics against direct computations on random maps; dense losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score

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


def test_fmeasure_histogram_path_equals_the_thresholded_loop() -> None:
    g = torch.Generator().manual_seed(6)
    target = (torch.rand(3, 1, 12, 12, generator=g) < 0.3).float()
    target[0, 0, 0, :4] = 255.0  # ignored
    logits = 2 * (target.clamp(max=1) - 0.5) + torch.randn(3, 1, 12, 12, generator=g)
    fast, slow = FMeasureMeter(thresholds=9), FMeasureMeter(thresholds=9, tolerance=0)
    fast.update(logits, target)
    # the loop, forced: a tolerance of 0 through the dilation path is the identity
    slow.tolerance = -1
    slow.update(logits, target)
    torch.testing.assert_close(fast.counts, slow.counts)
