"""Evaluation metrics (spec §9): pure functions plus :class:`MetricAccumulator`.

Inputs may be torch tensors or numpy arrays (anything :func:`torch.as_tensor` accepts); the
confusion matrix is a torch ``int64`` tensor, the per-class vectors are ``float64`` tensors, and
scalar metrics are Python floats.

Segmentation (confusion matrix ``cm[target, pred]``, pixels labelled ``ignore_index`` skipped):

* F1 / Dice of class k ``= 2 TP / (2 TP + FP + FN)``; Jaccard / IoU ``= TP / (TP + FP + FN)``;
  both ``nan`` for a class absent from target *and* prediction (0/0);
* pixel accuracy ``= trace / total``;
* mIoU = mean IoU over the classes **present in the target or the prediction** (union > 0);
  classes absent from both are left out rather than counted as 0 or 1.

Accumulate one confusion matrix over a whole test set (``cm += confusion_matrix(...)``), then
derive the metrics: F1 / IoU are then dataset-level (pixels pooled over images), the usual
convention for DRIVE / EM / CamVid figures.

Denoising, per image, then averaged by the caller / accumulator:

* PSNR ``= 10 log10(data_range² / MSE)`` (``inf`` for identical images);
* SSIM with an 11x11 Gaussian window, σ = 1.5, population covariances, K1 = 0.01, K2 = 0.03,
  on the 0–255 range (Wang et al. 2004 as used by DnCNN & co.), through
  :func:`skimage.metrics.structural_similarity`; colour images: mean over channels.

The estimate is clipped to ``[0, 1]`` before PSNR and SSIM (``clip=True``), as an 8-bit image
would be; the clean image is taken as is.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np
import torch
from skimage.metrics import structural_similarity

from sjunet.data.common import DENOISING, IGNORE_INDEX, SEGMENTATION

ArrayLike = torch.Tensor | np.ndarray


def _tensor(x: Any) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


# --------------------------------------------------------------------------- segmentation


def confusion_matrix(
    pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> torch.Tensor:
    """``int64 [K, K]`` counts, row = target class, column = predicted class.

    ``pred`` and ``target`` hold class indices of the same shape (any shape, e.g. ``[B, H, W]`` or
    volumes ``[B, D, H, W]``: both are flattened).
    Pixels whose target is ``ignore_index`` are skipped; a target or prediction outside
    ``0..K-1`` otherwise raises ``ValueError``. Matrices of several images add up.
    """
    pred, target = _tensor(pred).long().reshape(-1), _tensor(target).long().reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in size: {pred.numel()} vs {target.numel()}")
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target has values outside 0..{num_classes - 1} (other than ignore_index)")
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"pred has values outside 0..{num_classes - 1}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).to(torch.int64)


def _tp_fp_fn(cm: ArrayLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cm = _tensor(cm).to(torch.float64)
    tp = cm.diagonal()
    return tp, cm.sum(0) - tp, cm.sum(1) - tp


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, math.nan))


def f1_per_class(cm: ArrayLike) -> torch.Tensor:
    """F1 (Dice) per class, ``float64 [K]``; ``nan`` where the class is absent from target and prediction."""
    tp, fp, fn = _tp_fp_fn(cm)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou_per_class(cm: ArrayLike) -> torch.Tensor:
    """Jaccard index (IoU) per class, ``float64 [K]``; ``nan`` where the class is absent from both."""
    tp, fp, fn = _tp_fp_fn(cm)
    return _ratio(tp, tp + fp + fn)


jaccard_per_class = iou_per_class


def pixel_accuracy(cm: ArrayLike) -> float:
    """Fraction of counted pixels predicted correctly (``nan`` for an empty matrix)."""
    cm = _tensor(cm).to(torch.float64)
    total = float(cm.sum())
    return float(cm.trace()) / total if total else math.nan


def mean_iou(cm: ArrayLike) -> float:
    """Mean IoU over the classes present in the target or the prediction."""
    iou = iou_per_class(cm)
    present = ~torch.isnan(iou)
    return float(iou[present].mean()) if present.any() else math.nan


def metric_key(name: str) -> str:
    """Class name → key fragment: lower case, non-alphanumerics as ``_`` (``'SignSymbol'`` → ``'signsymbol'``)."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "class"


#: names and units of the metric keys, for axis labels, panel titles and table headers
_LABELS = {"psnr": ("PSNR", "dB"), "ssim": ("SSIM", ""), "miou": ("mIoU", ""), "accuracy": ("pixel accuracy", ""),
           "agreement": ("pixel agreement with the ANN", ""),
           "psnr_vs_reference": ("PSNR of the SNN's output against the ANN's", "dB")}


def metric_unit(key: str) -> str:
    """The unit of a metric key (``"dB"`` for PSNR; ``""`` for the unitless scores in [0, 1])."""
    return _LABELS.get(key, ("", ""))[1]


def metric_label(key: str, unit: bool = True) -> str:
    """A metric key as people read it, with its unit: ``f1_vessel`` → ``F1 (vessel)``, ``psnr`` →
    ``PSNR (dB)``, ``miou`` → ``mIoU``, ``jaccard_membrane`` → ``IoU (membrane)``."""
    for prefix, name in (("f1_", "F1"), ("jaccard_", "IoU"), ("iou_", "IoU")):
        if key.startswith(prefix):
            return f"{name} ({key[len(prefix):]})"
    name, u = _LABELS.get(key, (key, ""))
    return f"{name} ({u})" if unit and u else name


def format_metric(key: str, value: float | None, digits: int = 4) -> str:
    """``"F1 (vessel) 0.6123"``, ``"PSNR 27.12 dB"``: a value with its metric's name and unit."""
    if value is None or value != value:
        return f"{metric_label(key, unit=False)} —"
    u = metric_unit(key)
    return f"{metric_label(key, unit=False)} {value:.{2 if u == 'dB' else digits}f}" + (f" {u}" if u else "")


def segmentation_metrics(cm: ArrayLike, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Metrics of an accumulated confusion matrix.

    Binary (K = 2): ``f1_<c>`` and ``jaccard_<c>`` for **both** classes, ``accuracy``, ``miou``.
    Multi-class: ``miou``, ``accuracy`` and ``iou_<c>`` per class.
    ``<c>`` comes from ``class_names`` via :func:`metric_key` (default ``class0``, ``class1``…),
    e.g. EM ``('membrane', 'interior')`` → ``f1_membrane``, ``f1_interior``.
    Per-class values are ``nan`` for classes absent from target and prediction.
    """
    k = _tensor(cm).shape[0]
    names = [metric_key(n) for n in class_names] if class_names else [f"class{i}" for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    if len(set(names)) != k:
        raise ValueError(f"class names are not distinct as metric keys: {names}")
    iou = iou_per_class(cm).tolist()
    out: dict[str, float] = {}
    if k == 2:
        f1 = f1_per_class(cm).tolist()
        out.update({f"f1_{n}": v for n, v in zip(names, f1)})
        out.update({f"jaccard_{n}": v for n, v in zip(names, iou)})
        out["accuracy"] = pixel_accuracy(cm)
        out["miou"] = mean_iou(cm)
    else:
        out["miou"] = mean_iou(cm)
        out["accuracy"] = pixel_accuracy(cm)
        out.update({f"iou_{n}": v for n, v in zip(names, iou)})
    return out


def pixel_agreement(pred_a: ArrayLike, pred_b: ArrayLike, ignore_mask: ArrayLike | None = None) -> float:
    """Fraction of positions where two predictions (class indices) are equal, leaving out the
    positions where ``ignore_mask`` is true (``nan`` if nothing is left)."""
    a, b = _tensor(pred_a), _tensor(pred_b)
    if a.shape != b.shape:
        raise ValueError(f"predictions differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    equal = a == b
    if ignore_mask is not None:
        equal = equal[~_tensor(ignore_mask).bool().expand_as(equal)]
    return float(equal.double().mean()) if equal.numel() else math.nan


# --------------------------------------------------------------------------- denoising


def _image_pair(clean: ArrayLike, estimate: ArrayLike, clip: bool) -> tuple[np.ndarray, np.ndarray]:
    c = _tensor(clean).to(torch.float64).numpy()
    e = _tensor(estimate).to(torch.float64).numpy()
    if c.shape != e.shape:
        raise ValueError(f"clean and estimate differ in shape: {c.shape} vs {e.shape}")
    return c, (np.clip(e, 0.0, 1.0) if clip else e)


def psnr(clean: ArrayLike, estimate: ArrayLike, data_range: float = 1.0, clip: bool = True) -> float:
    """PSNR in dB of one image (any shape, e.g. ``[C, H, W]``), values in ``[0, data_range]``.

    ``clip`` clips the estimate to ``[0, data_range]`` first.
    """
    c, e = _image_pair(clean, estimate, clip=False)
    if clip:
        e = np.clip(e, 0.0, data_range)
    mse = float(np.mean((c - e) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(clean: ArrayLike, estimate: ArrayLike, clip: bool = True) -> float:
    """SSIM of one image in ``[0, 1]``, ``[H, W]`` or ``[C, H, W]`` (channels averaged), computed on
    the 0–255 range with an 11x11 Gaussian window, σ = 1.5 (see the module docstring)."""
    c, e = _image_pair(clean, estimate, clip)
    if c.ndim == 3 and c.shape[0] == 1:
        c, e = c[0], e[0]
    channel_axis = None
    if c.ndim == 3:
        c, e, channel_axis = np.moveaxis(c, 0, -1), np.moveaxis(e, 0, -1), -1
    elif c.ndim != 2:
        raise ValueError(f"ssim expects [H, W] or [C, H, W], got shape {c.shape}")
    return float(
        structural_similarity(
            c * 255.0, e * 255.0, data_range=255.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, channel_axis=channel_axis,
        )  # fmt: skip
    )


# --------------------------------------------------------------------------- accumulator


class MetricAccumulator:
    """Accumulate a model's metrics over a test set, batch by batch.

    Segmentation: ``update(logits [B,K,H,W] or labels [B,H,W], target [B,H,W], reference=None)``;
    pixels whose target is ``ignore_index`` count neither in the metrics nor in ``agreement``.
    Volumes (``spatial_dims=3``): logits ``[B,K,D,H,W]`` or labels ``[B,D,H,W]`` against
    ``target [B,D,H,W]``, ``num_images`` counting volumes. Logits are told from labels by their extra
    class axis (a floating output of the target's shape is taken as labels), so 3-D logits are
    argmaxed even with the default ``spatial_dims=2``; ``spatial_dims`` only decides whether a
    target's first axis is the batch (for ``num_images``).
    Denoising: ``update_denoising(noisy, noise_pred, noise_true, reference=None)`` with
    ``[B,C,H,W]`` tensors (or ``update(noise_pred, (noisy, noise_true))``); the estimate is
    ``noisy - noise_pred``, the clean image ``noisy - noise_true``.
    ``reference`` is another model's output for the same batch (e.g. the ANN's, when scoring the
    SNN): segmentation adds ``agreement`` (fraction of equal predicted labels), denoising adds
    ``psnr_vs_reference`` (PSNR of the estimate against the reference's estimate).
    """

    def __init__(
        self,
        task: str,
        num_classes: int = 0,
        class_names: Sequence[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        spatial_dims: int = 2,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if task not in (SEGMENTATION, DENOISING):
            raise ValueError(f"task must be {SEGMENTATION!r} or {DENOISING!r}, got {task!r}")
        if task == SEGMENTATION and num_classes < 2:
            raise ValueError("segmentation needs num_classes >= 2")
        self.task = task
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None
        self.ignore_index = ignore_index
        self.spatial_dims = int(spatial_dims)
        self.cm = torch.zeros(max(num_classes, 1), max(num_classes, 1), dtype=torch.int64)
        self.agree = 0
        self.compared = 0
        #: denoising: one dict per image (psnr, ssim, and psnr_vs_reference when given)
        self.per_image: list[dict[str, float]] = []
        self.num_images = 0

    def _labels(self, output: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Class indices of ``output``: the argmax over axis 1 of floating logits (``[B,K,*S]``: one
        axis more than the target, or ``spatial_dims + 2`` axes), else ``output`` as ``int64``."""
        output = _tensor(output)
        if output.is_floating_point():
            if target is not None and tuple(output.shape) == tuple(target.shape):
                return output.long()  # floating labels
            if output.dim() == self.spatial_dims + 2 or (target is not None and output.dim() == target.dim() + 1):
                return output.argmax(1)
        return output.long()

    def update(self, output: Any, target: Any, reference: Any = None) -> None:
        """Add a batch (see the class docstring for the two tasks' arguments)."""
        if self.task == SEGMENTATION:
            self.update_segmentation(output, target, reference)
        else:
            noisy, noise_true = target
            self.update_denoising(noisy, output, noise_true, reference)

    def update_segmentation(self, output: Any, target: Any, reference: Any = None) -> None:
        """Add logits ``[B,K,H,W]`` (argmax taken) or labels ``[B,H,W]`` against ``target [B,H,W]``
        (volumes: ``[B,K,D,H,W]`` / ``[B,D,H,W]``)."""
        target = _tensor(target).long()
        pred = self._labels(output, target)
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if reference is not None:
            valid = target != self.ignore_index
            self.agree += int(((pred == self._labels(reference, target)) & valid).sum())
            self.compared += int(valid.sum())
        self.num_images += int(target.shape[0]) if target.dim() == self.spatial_dims + 1 else 1

    def update_denoising(self, noisy: Any, noise_pred: Any, noise_true: Any, reference: Any = None) -> None:
        """Add a batch ``[B,C,H,W]``: metrics of ``noisy - noise_pred`` against ``noisy - noise_true``."""
        noisy, noise_pred, noise_true = _tensor(noisy), _tensor(noise_pred), _tensor(noise_true)
        if noisy.dim() == 3:
            noisy, noise_pred, noise_true = noisy[None], noise_pred[None], noise_true[None]
            reference = None if reference is None else _tensor(reference)[None]
        clean, estimate = noisy - noise_true, noisy - noise_pred
        for i in range(noisy.shape[0]):
            row = {"psnr": psnr(clean[i], estimate[i]), "ssim": ssim(clean[i], estimate[i])}
            if reference is not None:
                ref_estimate = (noisy[i] - _tensor(reference)[i]).clamp(0, 1)
                row["psnr_vs_reference"] = psnr(ref_estimate, estimate[i])
            self.per_image.append(row)
        self.num_images += int(noisy.shape[0])

    def result(self) -> dict[str, float]:
        """Metrics so far: :func:`segmentation_metrics` (+ ``agreement``) or mean ``psnr`` / ``ssim``
        (+ ``psnr_vs_reference``), plus ``num_images``."""
        if self.task == SEGMENTATION:
            out = segmentation_metrics(self.cm, self.class_names)
            if self.compared:
                out["agreement"] = self.agree / self.compared
        else:
            keys = self.per_image[0].keys() if self.per_image else ("psnr", "ssim")
            out = {
                k: float(np.mean([row[k] for row in self.per_image if k in row])) if self.per_image else math.nan
                for k in keys
            }
        out["num_images"] = float(self.num_images)
        return out
