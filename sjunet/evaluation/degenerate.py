"""Broken models: an ANN whose output is one class everywhere, or one constant image.

A network stopped too early (``train --max-minutes 3`` on a busy machine: 11 iterations) can
predict the majority class on every pixel — validation F1 of the foreground 0.0000 — or, for
denoising, the same noise map whatever the input. Calibrating, converting, fine-tuning and
counting the energy of such a model all "work" and report numbers that mean nothing, so sjunet
says so once, in one line, wherever such a model goes:

* :func:`check_model` runs the model on a few items of a dataset (its validation split at the end
  of ``train``; the calibration data in ``calibrate``; the test images in ``energy``) and returns
  the reason it is degenerate, or ``None``; :class:`OutputCheck` is the same test over outputs you
  already have;
* the reason is recorded in what the model makes — the checkpoint (``degenerate``), the
  statistics' data description (``model_degenerate``), the SNN record (``conversion.model_degenerate``)
  — so later commands repeat it (:func:`recorded`) without running anything;
* :func:`warning_line` is that one line.

Thresholds: a segmentation model is degenerate when a single class is predicted on every pixel
checked; a denoising model when its output's range over every pixel checked is below
:data:`CONSTANT_RANGE` (relative to the input's range): the same map for any input.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from sjunet.io import DEGENERATE_KEY

#: a denoising output whose max − min is below this fraction of the inputs' max − min is constant
CONSTANT_RANGE = 1e-4
#: items :func:`check_model` runs
CHECK_ITEMS = 4
#: the record key the reason is stored under (checkpoint, statistics data description, SNN conversion record)
KEY = DEGENERATE_KEY


class OutputCheck:
    """Accumulates model outputs (``[B, K, …]`` class scores for segmentation, ``[B, C, …]`` noise
    maps for denoising) and the inputs' range; :meth:`reason` says whether they are degenerate."""

    def __init__(self, kind: str, class_names: "list[str] | None" = None) -> None:
        self.kind, self.class_names = kind, class_names
        self.classes: set[int] = set()
        self.lo = self.hi = None
        self.in_lo = self.in_hi = None
        self.items = 0

    def update(self, output: torch.Tensor, x: torch.Tensor | None = None) -> None:
        output = output.detach()
        self.items += int(output.shape[0])
        if self.kind == "segmentation":
            self.classes.update(int(c) for c in torch.unique(output.argmax(1)))
            return
        lo, hi = float(output.min()), float(output.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)
        if x is not None:
            a, b = float(x.min()), float(x.max())
            self.in_lo = a if self.in_lo is None else min(self.in_lo, a)
            self.in_hi = b if self.in_hi is None else max(self.in_hi, b)

    def reason(self) -> str | None:
        """Why the outputs are degenerate ("predicts class 'interior' on every pixel of 4 images"),
        or ``None``."""
        if not self.items:
            return None
        what = f"{self.items} image{'s' if self.items != 1 else ''}"
        if self.kind == "segmentation":
            if len(self.classes) != 1:
                return None
            (c,) = self.classes
            name = self.class_names[c] if self.class_names and c < len(self.class_names) else str(c)
            return f"it predicts one class ({name!r}) on every pixel of {what}"
        if self.lo is None:
            return None
        scale = (self.in_hi - self.in_lo) if self.in_lo is not None and self.in_hi > self.in_lo else 1.0
        if self.hi - self.lo <= CONSTANT_RANGE * scale:
            return f"its output is the same constant ({(self.hi + self.lo) / 2:.3g}) on every pixel of {what}"
        return None


def check_outputs(run: Callable[[torch.Tensor], torch.Tensor], inputs: Iterable[torch.Tensor], kind: str,
                  class_names: "list[str] | None" = None) -> str | None:
    """:class:`OutputCheck` over ``run(x)`` for every batch ``x`` of ``inputs``."""
    check = OutputCheck(kind, class_names)
    with torch.no_grad():
        for x in inputs:
            check.update(run(x), x)
    return check.reason()


def check_model(model: torch.nn.Module, dataset, items: int = CHECK_ITEMS, device: str = "cpu",
                multiple: "int | tuple[int, ...] | None" = None, protocol=None) -> str | None:
    """Run the ANN ``model`` on the first ``items`` items of ``dataset`` as evaluation does (under
    ``protocol``, default whole images padded to the size rule; a model of one input size by its
    windows or tiles: :func:`sjunet.evaluation.layout.predict`) and return why its outputs are
    degenerate, or ``None``."""
    from sjunet.evaluation.layout import pad_to_multiple, predict
    from sjunet.snn import size_rule
    from sjunet.tasks import task_for

    task = task_for(dataset)
    multiple = multiple or size_rule(model)
    n = min(int(items), len(dataset))
    was_training = model.training
    model.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        return model(x) if protocol is None else predict(lambda t: {None: model(t)}, x, dataset, multiple,
                                                         protocol)[None]
    try:
        inputs = ((dataset[i][0].unsqueeze(0) if protocol is not None else
                   pad_to_multiple(dataset[i][0].unsqueeze(0), multiple)).to(device) for i in range(n))
        return check_outputs(run, inputs, task.kind, list(getattr(task, "class_names", None) or []) or None)
    finally:
        model.train(was_training)


def warning_line(reason: str, what: str = "the ANN") -> str:
    """The one line every command prints for a degenerate model."""
    return (f"warning: {what} looks broken — {reason}: its scores, and those of anything converted from it, "
            "mean nothing; train it longer (more --max-minutes or --epochs) or check the data")


def recorded(*records: "dict[str, Any] | None") -> str | None:
    """The first degenerate-model reason recorded under :data:`KEY` in any of ``records`` (a
    checkpoint, a statistics data description, an SNN conversion record), or ``None``."""
    for r in records:
        if isinstance(r, dict) and isinstance(r.get(KEY), str):
            return r[KEY]
    return None


__all__ = ["CHECK_ITEMS", "CONSTANT_RANGE", "KEY", "OutputCheck", "check_model", "check_outputs", "recorded",
           "warning_line"]
