"""Segmentation and denoising: the only place the two tasks differ (loss, decoding, metrics).

Everything else — training, calibration, conversion, simulation, fine-tuning — is shared and
asks a :class:`Task` for the task-specific piece.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from sjunet import metrics
from sjunet.data.common import IGNORE_INDEX


class Meter:
    """Accumulates one model's metrics over a test set."""

    def update(self, output: torch.Tensor, x: torch.Tensor, target: torch.Tensor,
               reference: torch.Tensor | None = None) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        raise NotImplementedError


@dataclass
class SegmentationTask:
    """Per-pixel classification; prediction = argmax over classes of the output (spec §6)."""

    num_classes: int
    class_names: Sequence[str] | None = None
    kind: str = field(default="segmentation", init=False)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target, ignore_index=IGNORE_INDEX)

    def new_meter(self) -> "SegmentationMeter":
        return SegmentationMeter(self.num_classes, self.class_names)

    def score(self, result: dict[str, float]) -> float:
        """The single number a checkpoint is selected on: mean F1 (binary) or mIoU."""
        if self.num_classes == 2:
            return result["f1_mean"]
        return result["miou"]


class SegmentationMeter(Meter):
    def __init__(self, num_classes: int, class_names=None) -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else None
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.agree = 0
        self.total = 0

    def update(self, output, x, target, reference=None) -> None:
        pred = output.argmax(1)
        self.cm += metrics.confusion_matrix(pred, target, self.num_classes, IGNORE_INDEX)
        if reference is not None:
            valid = target != IGNORE_INDEX
            self.agree += int(((pred == reference.argmax(1)) & valid).sum())
            self.total += int(valid.sum())

    def result(self) -> dict[str, float]:
        r = dict(metrics.segmentation_metrics(self.cm, self.class_names))
        if self.num_classes == 2:
            r["f1_mean"] = float(sum(v for k, v in r.items() if k.startswith("f1_")) / 2)
        if self.total:
            r["agreement"] = self.agree / self.total
        return r


@dataclass
class DenoisingTask:
    """Residual denoising: the network predicts the noise map; clean = noisy − map (spec §2)."""

    channels: int = 1
    kind: str = field(default="denoising", init=False)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(output, target)

    def new_meter(self) -> "DenoisingMeter":
        return DenoisingMeter()

    def score(self, result: dict[str, float]) -> float:
        return result["psnr"]


class DenoisingMeter(Meter):
    """PSNR/SSIM of (noisy − predicted noise) against the clean image, per image, averaged.
    ``psnr_vs_reference`` compares against the reference model's denoised image instead."""

    def __init__(self) -> None:
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.ref_psnr: list[float] = []

    def update(self, output, x, target, reference=None) -> None:
        clean = x - target
        est = (x - output).clamp(0, 1)
        for i in range(x.shape[0]):
            self.psnr.append(float(metrics.psnr(clean[i], est[i])))
            self.ssim.append(float(metrics.ssim(clean[i], est[i])))
            if reference is not None:
                ref = (x[i] - reference[i]).clamp(0, 1)
                self.ref_psnr.append(float(metrics.psnr(ref, est[i])))

    def result(self) -> dict[str, float]:
        r = {"psnr": sum(self.psnr) / len(self.psnr), "ssim": sum(self.ssim) / len(self.ssim)}
        if self.ref_psnr:
            r["psnr_vs_reference"] = sum(self.ref_psnr) / len(self.ref_psnr)
        return r


Task = SegmentationTask | DenoisingTask


def task_for(dataset) -> Task:
    """The task object matching a dataset (its ``task``, ``num_classes``, ``in_channels``)."""
    if dataset.task == "segmentation":
        return SegmentationTask(dataset.num_classes, getattr(dataset, "CLASS_NAMES", None))
    if dataset.task == "denoising":
        return DenoisingTask(dataset.in_channels)
    raise ValueError(f"unknown task {dataset.task!r}")


def task_from_dict(d: dict) -> Task:
    if d["kind"] == "segmentation":
        return SegmentationTask(d["num_classes"], d.get("class_names"))
    return DenoisingTask(d.get("channels", 1))


def task_to_dict(task: Task) -> dict:
    if isinstance(task, SegmentationTask):
        return {"kind": task.kind, "num_classes": task.num_classes,
                "class_names": list(task.class_names) if task.class_names else None}
    return {"kind": task.kind, "channels": task.channels}
