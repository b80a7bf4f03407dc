"""Segmentation and denoising: the only place the two tasks differ (loss, decoding, metrics).

Metrics accumulate in :class:`sjunet.metrics.MetricAccumulator`; a task says which loss, which
accumulator, what it is fed, and which single number selects checkpoints.

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


@dataclass
class SegmentationTask:
    """Per-pixel classification; prediction = argmax over classes of the output (spec §6)."""

    num_classes: int
    class_names: Sequence[str] | None = None
    kind: str = field(default="segmentation", init=False)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target, ignore_index=IGNORE_INDEX)

    def new_meter(self) -> metrics.MetricAccumulator:
        return metrics.MetricAccumulator(self.kind, self.num_classes, self.class_names)

    def meter_target(self, x: torch.Tensor, y: torch.Tensor):
        return y

    def score(self, result: dict[str, float]) -> float:
        """The single number a checkpoint is selected on: mean F1 of both classes (binary) or mIoU."""
        if self.num_classes == 2:
            f1 = [v for k, v in result.items() if k.startswith("f1_")]
            return float(sum(f1) / len(f1))
        return result["miou"]


@dataclass
class DenoisingTask:
    """Residual denoising: the network predicts the noise map; clean = noisy − map (spec §2)."""

    channels: int = 1
    kind: str = field(default="denoising", init=False)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(output, target)

    def new_meter(self) -> metrics.MetricAccumulator:
        return metrics.MetricAccumulator(self.kind)

    def meter_target(self, x: torch.Tensor, y: torch.Tensor):
        return (x, y)  # the accumulator needs the noisy image and the true noise

    def score(self, result: dict[str, float]) -> float:
        return result["psnr"]


Task = SegmentationTask | DenoisingTask


def task_for(dataset) -> Task:
    """The task object matching a dataset (its ``task``, ``num_classes``, ``in_channels``)."""
    if dataset.task == "segmentation":
        return SegmentationTask(dataset.num_classes, getattr(dataset, "CLASS_NAMES", None))
    if dataset.task == "denoising":
        return DenoisingTask(dataset.in_channels)
    raise ValueError(f"unknown task {dataset.task!r}")


def task_to_dict(task: Task) -> dict:
    if isinstance(task, SegmentationTask):
        return {"kind": task.kind, "num_classes": task.num_classes,
                "class_names": list(task.class_names) if task.class_names else None}
    return {"kind": task.kind, "channels": task.channels}
