"""Segmentation and denoising: the only place the two tasks differ (loss, decoding, metrics).

Metrics accumulate in :class:`sjunet.metrics.MetricAccumulator`; a task says which loss, which
accumulator, what it is fed, and which single number selects checkpoints: the dataset's
**headline metric** (:attr:`SegmentationTask.metric`), the one the paper's tables report —

* binary segmentation: the F1 of the foreground class (DRIVE ``f1_vessel``, EM ``f1_membrane``):
  the class the dataset declares (``FOREGROUND``), else the class that is not called
  ``background``, else the rarer class in a sample of the labels. Not the mean F1 of both
  classes: the background dominates it, so it can rise while the vessels get worse;
* multi-class segmentation (CamSeq01/CamVid): ``miou``;
* denoising: ``psnr``.

Class weights (``--class-weights auto|none|w1,w2``, :func:`resolve_class_weights`) weight the
cross-entropy of segmentation training: ``auto`` is the inverse class frequency of a sample of
the training labels (normalised to mean 1) for binary segmentation whose foreground is under
:data:`AUTO_WEIGHT_BELOW` (20 %) of the labelled pixels, else none. They change training only,
never conversion or evaluation.

Everything else — training, calibration, conversion, simulation, fine-tuning — is shared and
asks a :class:`Task` for the task-specific piece.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from sjunet import metrics
from sjunet.data.common import IGNORE_INDEX

#: ``--class-weights auto`` weights the classes when the foreground is under this share of the pixels
AUTO_WEIGHT_BELOW = 0.20
#: training items :func:`label_frequencies` reads (evenly spaced over the split)
LABEL_SAMPLE = 32


@dataclass
class SegmentationTask:
    """Per-pixel classification; prediction = argmax over classes of the output (spec §6)."""

    num_classes: int
    class_names: Sequence[str] | None = None
    #: index of the foreground class of a binary task (its F1 is the headline metric); None: class 1
    foreground: int | None = None
    #: per-class weights of the cross-entropy (None: unweighted)
    class_weights: Sequence[float] | None = None
    #: spatial axes of the items (2: images, 3: volumes ``[B,D,H,W]``), for the meter's image count
    spatial_dims: int = 2
    kind: str = field(default="segmentation", init=False)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = None
        if self.class_weights is not None:
            w = torch.as_tensor(list(self.class_weights), dtype=output.dtype, device=output.device)
        return F.cross_entropy(output, target, weight=w, ignore_index=IGNORE_INDEX)

    def new_meter(self) -> metrics.MetricAccumulator:
        return metrics.MetricAccumulator(self.kind, self.num_classes, self.class_names,
                                         spatial_dims=self.spatial_dims)

    def meter_target(self, x: torch.Tensor, y: torch.Tensor):
        return y

    @property
    def metric(self) -> str:
        """The headline metric's key: ``f1_<foreground>`` (binary) or ``miou`` (module docstring)."""
        if self.num_classes != 2:
            return "miou"
        names = ([metrics.metric_key(n) for n in self.class_names] if self.class_names
                 else [f"class{i}" for i in range(self.num_classes)])
        return f"f1_{names[1 if self.foreground is None else self.foreground]}"

    def score(self, result: dict[str, float]) -> float:
        """The single number a checkpoint is selected on: :attr:`metric` (the headline metric)."""
        return float(result[self.metric])


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

    @property
    def metric(self) -> str:
        return "psnr"

    def score(self, result: dict[str, float]) -> float:
        return float(result["psnr"])


Task = SegmentationTask | DenoisingTask


def label_frequencies(dataset, num_classes: int, items: int = LABEL_SAMPLE) -> list[float]:
    """Share of each class among the labelled pixels of up to ``items`` items of ``dataset`` (evenly
    spaced; ignored pixels left out). The global random state is left as it was."""
    from sjunet.rng import rng_preserved

    n = len(dataset)
    if n == 0:
        raise ValueError("the training split is empty")
    picks = sorted({int(i * n / min(n, items)) for i in range(min(n, items))})
    counts = torch.zeros(num_classes, dtype=torch.float64)
    with rng_preserved():
        for i in picks:
            y = torch.as_tensor(dataset[i][1]).long().reshape(-1)
            y = y[(y != IGNORE_INDEX) & (y >= 0) & (y < num_classes)]
            counts += torch.bincount(y, minlength=num_classes).double()
    total = float(counts.sum())
    if total == 0:
        raise ValueError("the sampled training labels hold no labelled pixel")
    return [float(c) / total for c in counts]


def _declared_foreground(dataset, names: Sequence[str] | None) -> int | None:
    if not names:
        return None
    declared = getattr(dataset, "FOREGROUND", None)
    if declared in names:
        return list(names).index(declared)
    lower = [str(n).lower() for n in names]
    if len(names) == 2 and "background" in lower:
        return 1 - lower.index("background")
    return None


def task_for(dataset) -> Task:
    """The task object matching a dataset (its ``task``, ``num_classes``, ``in_channels``; for a binary
    segmentation its foreground class, module docstring)."""
    if dataset.task == "segmentation":
        names = getattr(dataset, "CLASS_NAMES", None) or None
        fg = None
        if dataset.num_classes == 2:
            fg = _declared_foreground(dataset, names)
            if fg is None and len(dataset):  # the rarer class in the labels
                freq = label_frequencies(dataset, 2, items=8)
                fg = int(freq[1] <= freq[0])
        return SegmentationTask(dataset.num_classes, names, fg, spatial_dims=getattr(dataset, "spatial_dims", 2))
    if dataset.task == "denoising":
        return DenoisingTask(dataset.in_channels)
    raise ValueError(f"unknown task {dataset.task!r}")


CLASS_WEIGHT_CHOICES = "auto, none or comma-separated numbers (one per class, e.g. 1,5)"


def parse_class_weights(spec) -> str | tuple[float, ...]:
    """``--class-weights``: ``"auto"``, ``"none"`` or a tuple of positive numbers (one line if malformed)."""
    if spec is None:
        return "auto"
    if isinstance(spec, (list, tuple)):
        values = spec
    else:
        spec = str(spec).strip().lower()
        if spec in ("auto", "none"):
            return spec
        try:
            values = [float(v) for v in spec.split(",")]
        except ValueError:
            raise ValueError(f"--class-weights takes {CLASS_WEIGHT_CHOICES}; got {spec!r}") from None
    values = tuple(float(v) for v in values)
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"--class-weights must be positive finite numbers, got {','.join(map(str, values))}")
    return values


def resolve_class_weights(spec, task: Task, train_ds) -> tuple[tuple[float, ...] | None, dict]:
    """The cross-entropy weights of ``spec`` for training on ``train_ds`` and a record of how they
    were chosen: ``(weights or None, {"spec", "weights", "frequencies", "rule"})``. Denoising: none."""
    spec = parse_class_weights(spec)
    if not isinstance(task, SegmentationTask):
        if isinstance(spec, tuple):
            raise ValueError("--class-weights is for segmentation; a denoising task has no classes")
        return None, {"spec": "none", "weights": None, "rule": "denoising: no classes"}
    k = task.num_classes
    if isinstance(spec, tuple):
        if len(spec) != k:
            raise ValueError(f"--class-weights gives {len(spec)} weights but the dataset has {k} classes "
                             f"({', '.join(task.class_names or [])})")
        return spec, {"spec": list(spec), "weights": list(spec), "rule": "given"}
    if spec == "none":
        return None, {"spec": "none", "weights": None, "rule": "none (unweighted cross-entropy)"}
    if k != 2:
        return None, {"spec": "auto", "weights": None,
                      "rule": "auto: unweighted (weights are automatic for binary segmentation only)"}
    freq = label_frequencies(train_ds, k)
    fg = 1 if task.foreground is None else task.foreground
    if freq[fg] >= AUTO_WEIGHT_BELOW or min(freq) <= 0:
        return None, {"spec": "auto", "weights": None, "frequencies": freq,
                      "rule": f"auto: unweighted (the foreground is {freq[fg]:.1%} of the sampled training "
                              f"pixels, not under {AUTO_WEIGHT_BELOW:.0%})"}
    inv = [1.0 / f for f in freq]
    weights = tuple(v * k / sum(inv) for v in inv)  # inverse frequency, mean 1
    return weights, {"spec": "auto", "weights": list(weights), "frequencies": freq,
                     "rule": f"auto: inverse class frequency (the foreground is {freq[fg]:.1%} of the sampled "
                             f"training pixels, under {AUTO_WEIGHT_BELOW:.0%})"}


def describe_weights(record: dict, task: Task) -> str:
    """``"class weights 0.24 (background), 1.76 (vessel): auto: inverse class frequency (…)"``."""
    w = record.get("weights")
    if not w:
        return f"class weights: {record.get('rule', 'none')}"
    names = list(getattr(task, "class_names", None) or [f"class{i}" for i in range(len(w))])
    return "class weights " + ", ".join(f"{v:.3g} ({n})" for v, n in zip(w, names)) + f": {record.get('rule')}"


def task_to_dict(task: Task) -> dict:
    if isinstance(task, SegmentationTask):
        return {"kind": task.kind, "num_classes": task.num_classes,
                "class_names": list(task.class_names) if task.class_names else None,
                "foreground": task.foreground, "metric": task.metric}
    return {"kind": task.kind, "channels": task.channels, "metric": task.metric}
