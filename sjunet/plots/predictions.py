"""The paper's Figures 4 and 5: for chosen test images, the input, the ground truth and every
system's output side by side (``sjunet plot predictions``).

:func:`predictions` runs each system — an ANN, or an SNN at its T — on the images exactly as the
evaluation does (padding to the network's size multiple, or overlapping patches for datasets
evaluated by patches) and decodes the output: a class map (segmentation, argmax) or the denoised
image (denoising: noisy − predicted noise map, clipped to [0, 1]). :func:`predictions_figure`
draws one row per image (segmentation masks; denoising images with a zoomed region, marked on
the input, in a second row) and returns the per-image metric of each system beside the figure.

Volumes ([C, D, H, W] items, e.g. ``em3d``, ``demo-seg3d``): every system runs on the whole volume
and is scored on it; the pictures are the middle slice along depth (``z = D // 2``, recorded as
each row's ``slice``), and the figure's title says so.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sjunet.tasks import task_for


def decode(task, x: torch.Tensor, out: torch.Tensor) -> np.ndarray:
    """A network output as a picture: class map [H, W] (segmentation) or denoised image [H, W, C]."""
    if task.kind == "segmentation":
        return out[0].argmax(0).cpu().numpy()
    return (x[0] - out[0]).clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def predictions(systems: Mapping[str, tuple[nn.Module, int | None]], dataset, indices: Sequence[int],
                mode: str = "step", chunk: int | str = "auto", device: str = "cpu") -> list[dict]:
    """Per image index: ``{"input", "truth", "outputs": {system: picture}, "scores": {system: score}}``.
    ``systems``: label -> (network, T); T ``None`` is an ANN."""
    from sjunet.distributed import resolve_device
    from sjunet.evaluation import ann_fn, predict, snn_fn
    from sjunet.snn import size_rule

    device = resolve_device(device)
    task = task_for(dataset)
    bad = [i for i in indices if not 0 <= int(i) < len(dataset)]
    if bad:
        raise ValueError(f"image index {bad[0]} is out of range: the split has {len(dataset)} images")
    nets = {k: (net.to(device).eval(), T, size_rule(net, dataset.in_channels)) for k, (net, T) in systems.items()}
    out = []
    for i in indices:
        x, y = dataset[int(i)]
        x, y = x[None].to(device), y[None].to(device)
        vol = x.dim() == 5
        mid = x.shape[2] // 2 if vol else None

        def pic(t: torch.Tensor, channels: bool = True) -> torch.Tensor:
            """A volume batch's middle slice along depth ([N, C, D, H, W] → [N, C, H, W]; a class
            map [N, D, H, W] → [N, H, W]); an image batch as it is."""
            return t if not vol else (t[:, :, mid] if channels else t[:, mid])

        seg = task.kind == "segmentation"
        row = {"index": int(i), "input": pic(x)[0].permute(1, 2, 0).cpu().numpy(),
               "truth": pic(y, False)[0].cpu().numpy() if seg else decode(task, pic(x), pic(y)),
               "outputs": {}, "scores": {}}
        if vol:
            row["slice"] = {"axis": "depth", "index": int(mid), "of": int(x.shape[2])}
        for label, (net, T, multiple) in nets.items():
            fn = ann_fn(net) if T is None else snn_fn(net, [T], mode=mode, chunk=chunk)
            o = predict(fn, x, dataset, multiple)
            o = o[None] if T is None else o[T]
            meter = task.new_meter()
            meter.update(o.cpu(), task.meter_target(x.cpu(), y.cpu()))
            row["outputs"][label] = decode(task, pic(x), pic(o))
            row["scores"][label] = float(task.score(meter.result()))
        out.append(row)
    return out


def _show(ax, img: np.ndarray, seg: bool, classes: int) -> None:
    if seg:
        ax.imshow(img, cmap="gray" if classes == 2 else "tab20", vmin=0, vmax=max(classes - 1, 1),
                  interpolation="nearest")
    else:
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def predictions_figure(rows: list[dict], task, output: str | os.PathLike, title: str = "",
                       zoom: float = 0.25) -> Path:
    """Draw :func:`predictions`' rows (module docstring); denoising panels get a zoomed region (the
    central ``zoom`` fraction of each side), marked with a box on the input."""
    from matplotlib.patches import Rectangle

    from sjunet.metrics import format_metric
    from sjunet.plots.figures import plt, save_figure

    seg = task.kind == "segmentation"
    classes = getattr(task, "num_classes", 2)
    labels = ["input", "ground truth", *rows[0]["outputs"]]
    per_image = 1 if seg else 2
    fig, axes = plt.subplots(len(rows) * per_image, len(labels), squeeze=False,
                             figsize=(2.2 * len(labels), 2.3 * len(rows) * per_image))
    for r, row in enumerate(rows):
        pics = [row["input"], row["truth"], *row["outputs"].values()]
        h, w = row["input"].shape[:2]
        zh, zw = max(1, int(h * zoom)), max(1, int(w * zoom))
        top, left = (h - zh) // 2, (w - zw) // 2
        for c, (label, pic) in enumerate(zip(labels, pics)):
            ax = axes[r * per_image, c]
            _show(ax, pic, seg and c > 0, classes)
            score = row["scores"].get(label)
            item = "volume" if row.get("slice") else "image"
            ax.set_title(f"{label}" + (f"\n{format_metric(task.metric, score)}" if score is not None
                                       else f"\n{item} {row['index']}"), fontsize=8)
            if not seg:
                ax.add_patch(Rectangle((left, top), zw, zh, fill=False, edgecolor="lime", linewidth=1))
                _show(axes[r * per_image + 1, c], pic[top:top + zh, left:left + zw], False, classes)
    names = list(getattr(task, "class_names", None) or [])
    if seg and classes == 2 and len(names) == 2:  # which class is which colour
        title = (f"{title} — " if title else "") + f"white: {names[1]}, black: {names[0]}"
    where = rows[0].get("slice") if rows else None
    if where:  # volumes: the pictures are one slice of each
        title = (f"{title} — " if title else "") + (f"middle slice of each volume along depth (z = {where['index']} "
                                                    f"of {where['of']}); scores over the whole volume")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, output)
