"""Tests of sjunet.metrics: hand-computed segmentation metrics, PSNR/SSIM against scikit-image."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sjunet import metrics
from sjunet.metrics import (MetricAccumulator, confusion_matrix, f1_per_class, iou_per_class, mean_iou, pixel_accuracy,
                            pixel_agreement, psnr, segmentation_metrics, ssim)

IGN = 255

# target / prediction of 8 pixels, one ignored
TARGET = torch.tensor([[0, 0, 1, 1], [1, 1, 0, IGN]])
PRED = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 1]])
# counted pixels: (t,p) = (0,0) (0,1) (1,1) (1,1) (1,0) (1,1) (0,0) → TP0=2, TP1=3, 0→1: 1, 1→0: 1


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(PRED, TARGET, 2)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[2, 1], [1, 3]]
    # accumulates, accepts numpy
    cm2 = cm + confusion_matrix(PRED.numpy(), TARGET.numpy(), 2, ignore_index=IGN)
    assert cm2.tolist() == [[4, 2], [2, 6]]
    with pytest.raises(ValueError):
        confusion_matrix(PRED, TARGET, 2, ignore_index=None)  # 255 is then a bad label


def test_binary_metrics_by_hand() -> None:
    cm = confusion_matrix(PRED, TARGET, 2)
    f1 = f1_per_class(cm)
    assert f1.tolist() == pytest.approx([2 * 2 / (2 * 2 + 1 + 1), 2 * 3 / (2 * 3 + 1 + 1)])
    assert iou_per_class(cm).tolist() == pytest.approx([2 / 4, 3 / 5])
    assert pixel_accuracy(cm) == pytest.approx(5 / 7)
    assert mean_iou(cm) == pytest.approx((0.5 + 0.6) / 2)
    m = segmentation_metrics(cm, ("membrane", "interior"))
    assert set(m) == {"f1_membrane", "f1_interior", "jaccard_membrane", "jaccard_interior", "accuracy", "miou"}
    assert m["f1_membrane"] == pytest.approx(4 / 6) and m["f1_interior"] == pytest.approx(6 / 8)
    assert m["jaccard_interior"] == pytest.approx(0.6) and m["accuracy"] == pytest.approx(5 / 7)
    assert set(segmentation_metrics(cm)) >= {"f1_class0", "f1_class1"}


def test_multiclass_miou_skips_absent_classes() -> None:
    target = torch.tensor([0, 0, 1, 1, 2, IGN])
    pred = torch.tensor([0, 1, 1, 1, 1, 3])
    cm = confusion_matrix(pred, target, 4)  # class 3 absent from target, its prediction ignored
    iou = iou_per_class(cm)
    # class0: TP1 FP0 FN1 → 1/2; class1: TP2 FP2 FN0 → 1/2; class2: TP0 FN1 → 0; class3: nan
    assert iou[:3].tolist() == pytest.approx([0.5, 0.5, 0.0]) and math.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx(1 / 3)
    m = segmentation_metrics(cm, ("Sky", "Sign Symbol", "Road", "Car"))
    assert m["miou"] == pytest.approx(1 / 3) and m["accuracy"] == pytest.approx(3 / 5)
    assert m["iou_sign_symbol"] == pytest.approx(0.5) and math.isnan(m["iou_car"])
    assert "f1_sky" not in m


def test_pixel_agreement() -> None:
    a = torch.tensor([[0, 1], [2, 2]])
    b = torch.tensor([[0, 1], [1, 0]])
    assert pixel_agreement(a, b) == pytest.approx(0.5)
    assert pixel_agreement(a, b, ignore_mask=torch.tensor([[False, False], [True, False]])) == pytest.approx(2 / 3)
    assert pixel_agreement(a.numpy(), a.numpy()) == 1.0


def test_psnr_against_skimage() -> None:
    rng = np.random.default_rng(0)
    clean = rng.random((1, 20, 24))
    est = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1)
    assert psnr(torch.from_numpy(clean), torch.from_numpy(est)) == pytest.approx(
        peak_signal_noise_ratio(clean, est, data_range=1.0), rel=1e-9
    )
    assert psnr(clean, clean) == math.inf
    # the estimate is clipped to [0, 1] first
    assert psnr(clean, clean + 5.0) == pytest.approx(peak_signal_noise_ratio(clean, np.ones_like(clean), data_range=1))


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_against_skimage(channels: int) -> None:
    rng = np.random.default_rng(channels)
    clean = rng.random((channels, 32, 40)).astype(np.float32)
    est = clean + rng.normal(0, 0.1, clean.shape).astype(np.float32)
    ref_est = np.clip(est, 0, 1).astype(np.float64) * 255
    ref = structural_similarity(
        np.moveaxis(clean.astype(np.float64) * 255, 0, -1).squeeze(),
        np.moveaxis(ref_est, 0, -1).squeeze(),
        data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        channel_axis=-1 if channels == 3 else None,
    )  # fmt: skip
    assert ssim(torch.from_numpy(clean), torch.from_numpy(est)) == pytest.approx(ref, rel=1e-6)
    assert ssim(clean, clean) == pytest.approx(1.0)


def test_accumulator_segmentation() -> None:
    acc = MetricAccumulator("segmentation", 2, ("background", "vessel"))
    logits = torch.nn.functional.one_hot(PRED, 2).permute(2, 0, 1).float()[None]  # [1,2,2,4]
    acc.update(logits, TARGET[None])
    acc.update(PRED[None], TARGET[None], reference=torch.zeros_like(PRED)[None])
    r = acc.result()
    assert r["f1_vessel"] == pytest.approx(6 / 8) and r["accuracy"] == pytest.approx(5 / 7)
    # agreement with an all-zero reference on the 7 counted pixels: 3 predicted zeros
    assert r["agreement"] == pytest.approx(3 / 7) and r["num_images"] == 2
    assert torch.equal(acc.cm, 2 * confusion_matrix(PRED, TARGET, 2))


def test_accumulator_denoising() -> None:
    torch.manual_seed(0)
    clean = torch.rand(2, 1, 24, 24)
    noise = 0.1 * torch.randn_like(clean)
    noisy = clean + noise
    pred = 0.8 * noise
    acc = MetricAccumulator("denoising")
    acc.update(pred, (noisy, noise), reference=pred)
    r = acc.result()
    expected = [psnr(clean[i], noisy[i] - pred[i]) for i in range(2)]
    assert r["psnr"] == pytest.approx(float(np.mean(expected)))
    assert r["ssim"] == pytest.approx(float(np.mean([ssim(clean[i], noisy[i] - pred[i]) for i in range(2)])))
    assert r["num_images"] == 2 and len(acc.per_image) == 2
    assert r["psnr_vs_reference"] > 60  # identical up to the clipping of the estimate
    acc2 = MetricAccumulator("denoising")
    acc2.update_denoising(noisy, noise, noise)
    assert acc2.result()["ssim"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        MetricAccumulator("classification")
    assert metrics.metric_key("SignSymbol") == "signsymbol"
