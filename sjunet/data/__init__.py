"""Datasets of sjunet and their registry.

Every dataset is a :class:`torch.utils.data.Dataset` with ``task`` (``"segmentation"`` or
``"denoising"``), ``in_channels``, ``num_classes`` (0 for denoising), ``CLASS_NAMES``
(segmentation), ``set_epoch(epoch)`` and ``describe()`` (a JSON-serialisable summary with a
fingerprint of the files read). Conventions: :mod:`sjunet.data.common`.

>>> ds = get_dataset("em", "../shared/data", "test")       # the data dir or the dataset dir
>>> x, y = ds[0]                                           # [1,512,512] float32, [512,512] int64
"""
from __future__ import annotations

import inspect
import os
from typing import Any

from .bsd import BSD68, CBSD68, BSDTrainDataset, Set12
from .camseq import CamSeqDataset
from .common import DATA_ENV, DENOISING, IGNORE_INDEX, SEGMENTATION, DatasetError, SJDataset
from .demo import DemoDenoising, DemoSegmentation
from .drive import DRIVEDataset
from .em import EMDataset
from .patches import predict_by_patches

#: registry name → dataset class (constructor ``cls(root, split, **options)``)
DATASETS: dict[str, type[SJDataset]] = {
    cls.name: cls
    for cls in (
        EMDataset, DRIVEDataset, CamSeqDataset, BSDTrainDataset, Set12, BSD68, CBSD68,
        DemoSegmentation, DemoDenoising,
    )
}  # fmt: skip

#: registry name → ``"segmentation"`` or ``"denoising"``
TASK_OF: dict[str, str] = {name: cls.task for name, cls in DATASETS.items()}


def _lookup(name: str) -> type[SJDataset]:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}") from None


def default_root(name: str) -> str | None:
    """Conventional sub-path of dataset ``name`` under a data directory (e.g. ``'BSD/Set12'``);
    ``None`` for the demo datasets, which read no files."""
    return _lookup(name).DEFAULT_ROOT


def splits_of(name: str) -> tuple[str, ...]:
    """The splits dataset ``name`` offers."""
    return _lookup(name).SPLITS


def get_dataset(name: str, root: str | os.PathLike | None, split: str, **options: Any) -> SJDataset:
    """Build dataset ``name`` for ``split`` from ``root``.

    ``root`` may be the dataset's own directory or the data directory holding it under
    :func:`default_root` (``None``: the directory named by ``$SJUNET_DATA``; ignored by the demo
    datasets). ``options`` are the keyword arguments of the dataset class (``seed``, ``crop``,
    ``sigma``…). Unknown names, splits or options raise :class:`DatasetError`.
    """
    cls = _lookup(name)
    accepted = [
        p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"{name}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
    return cls(root, split, **options)


__all__ = [
    "DATASETS", "TASK_OF", "DATA_ENV", "IGNORE_INDEX", "SEGMENTATION", "DENOISING",
    "DatasetError", "SJDataset", "default_root", "get_dataset", "splits_of", "predict_by_patches",
    "EMDataset", "DRIVEDataset", "CamSeqDataset", "BSDTrainDataset", "Set12", "BSD68", "CBSD68",
    "DemoSegmentation", "DemoDenoising",
]  # fmt: skip
