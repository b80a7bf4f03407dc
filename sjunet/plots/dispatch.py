"""``sjunet plot <kind>`` as a library function: :func:`plot` dispatches on the kind name.

A new figure is a function in its module of :mod:`sjunet.plots` (returning the numbers it draws),
a kind in :data:`KINDS` and a branch of :func:`plot`, and a subcommand of ``sjunet plot``
(:mod:`sjunet.cli.plot`), with its tests in ``tests/plots/``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from sjunet.plots.figures import NORM_LABELS
from sjunet.plots.paper import activation_vs_rate, histograms

KINDS = ("activation-vs-rate", "metric-vs-T", "metric-vs-energy", "histograms")


def _snn_label(snn: nn.Module, i: int) -> tuple[str, str]:
    """(column label, short name) of an SNN: its record's norm and neuron (``connection-wise (MT)``,
    ``, fine-tuned``), and the stem of the file it was read from (else its position)."""
    from sjunet.snn import record_of

    rec = record_of(snn)
    src = getattr(snn, "source", None) or {}
    stem = Path(src["path"]).stem if src.get("path") else str(i + 1)
    if rec is None:
        return f"SNN {i + 1}", stem
    conv = rec.conversion
    lab = NORM_LABELS.get(conv.norm, conv.norm or stem)
    if conv.neuron:
        lab += f" ({str(conv.neuron).upper()})"
    if rec.finetune:
        lab += ", fine-tuned"
    return lab, stem


def _activation_vs_rate_of(model, snn, dataset: str = "em", data=None, T: int = 20,
                           n_images: int = 1, dataset_options: dict | None = None,
                           labels: Sequence[str] | None = None, **kwargs) -> dict:
    """:func:`activation_vs_rate` of an ANN and SNN objects (a module, a list, or a dict label ->
    module), columns labelled from each SNN's record; an SNN converted from another ANN is refused.
    Files are read by the caller (``sjunet plot activation-vs-rate``: the CLI)."""
    from sjunet.io import model_fingerprint
    from sjunet.snn import record_of

    if not isinstance(model, nn.Module) or isinstance(snn, (str, os.PathLike)) or (
            not isinstance(snn, (Mapping, nn.Module)) and any(isinstance(p, (str, os.PathLike)) for p in snn)):
        raise TypeError("plot('activation-vs-rate') takes the ANN and the SNNs as modules: read files with "
                        "sjunet.models.checkpoint.load_ann and sjunet.load_snn")
    if isinstance(snn, Mapping):
        snns = dict(snn)
    else:
        fp = model_fingerprint(model)
        nets, names, stems = [], [], []
        for i, net in enumerate([snn] if isinstance(snn, nn.Module) else list(snn)):
            name, stem = _snn_label(net, i)
            rec = record_of(net)
            conv_fp = rec.conversion.ann_fingerprint if rec is not None else None
            if conv_fp not in (None, fp):
                raise ValueError(f"SNN {stem} was converted from model {conv_fp}, not from this ANN ({fp})")
            nets.append(net)
            names.append(name)
            stems.append(stem)
        snns = {}
        for net, name, stem in zip(nets, names, stems):
            snns[f"{name} [{stem}]" if names.count(name) > 1 else name] = net
    if labels is not None:
        if len(labels) != len(snns):
            raise ValueError(f"{len(labels)} labels for {len(snns)} SNNs")
        snns = dict(zip(labels, snns.values()))
    images = kwargs.pop("images", None)
    if images is None:
        from sjunet.data import get_dataset

        ds = get_dataset(dataset, data, "test", **(dataset_options or {}))
        n = min(int(n_images), len(ds))
        if n < 1:
            raise ValueError(f"dataset {dataset!r} test split is empty")
        ims = [ds[i][0] for i in range(n)]
        images = torch.stack(ims) if all(im.shape == ims[0].shape for im in ims) else [im.unsqueeze(0) for im in ims]
    return activation_vs_rate(model, snns, images, T, **kwargs)


def plot(kind: str, **kwargs) -> Any:
    """Library form of ``sjunet plot <kind>``.

    * ``"activation-vs-rate"``: :func:`activation_vs_rate` of objects:
      ``plot("activation-vs-rate", model=ann, snn=[snn_layer, snn_conn], dataset="em",
      data="../shared/data", T=20, n_images=1, output="fig3.png")`` — the first ``n_images`` test
      images; column labels from each SNN's record (norm, neuron, fine-tuned).
      ``snns=`` (a dict of modules) and ``images=`` are accepted as in :func:`activation_vs_rate`.
    * ``"metric-vs-T"``: :func:`sjunet.plots.curves.metric_vs_T` (``results=[...]``).
    * ``"metric-vs-energy"``: :func:`sjunet.plots.curves.metric_vs_energy` (``frontiers=[...]``).
    * ``"histograms"``: :func:`histograms` (``stats=``: a CalibrationStats).
    """
    if kind == "activation-vs-rate":
        if "snns" in kwargs:
            kwargs["snn"] = kwargs.pop("snns")
        if "snn" not in kwargs or "model" not in kwargs:
            raise ValueError("activation-vs-rate needs model= (the ANN) and snn= (the SNNs)")
        return _activation_vs_rate_of(**kwargs)
    if kind == "metric-vs-T":
        from sjunet.plots.curves import metric_vs_T

        return metric_vs_T(**kwargs)
    if kind == "metric-vs-energy":
        from sjunet.plots.curves import metric_vs_energy

        return metric_vs_energy(**kwargs)
    if kind == "histograms":
        return histograms(**kwargs)
    raise ValueError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}")
