"""Datasets of sjunet and their registry.

Every dataset is a :class:`torch.utils.data.Dataset` with ``task`` (``"segmentation"`` or
``"denoising"``), ``in_channels``, ``num_classes`` (0 for denoising), ``CLASS_NAMES``
(segmentation), ``set_epoch(epoch)`` and ``describe()`` (a JSON-serialisable summary with a
fingerprint of the files read). Conventions: :mod:`sjunet.data.common`.

>>> ds = get_dataset("em", "../shared/data", "test")       # the data dir or the dataset dir
>>> x, y = ds[0]                                           # [1,512,512] float32, [512,512] int64

Volumetric datasets (``spatial_dims == 3``: ``em3d``, ``demo-seg3d``) give ``x [C,D,H,W]``, ``y [D,H,W]``;
every dataset class has ``spatial_dims`` (2 for the others).

**A new dataset** is a module here (a :class:`~sjunet.data.common.SJDataset` subclass) registered in
:data:`DATASETS` below, with its tests in ``tests/data/``; training, evaluation and the CLI find it by
name. This package imports nothing else of sjunet (it sits below ``metrics``, ``tasks`` and everything
that evaluates or trains).
"""
from __future__ import annotations

import inspect
import os
from typing import Any

from .bsd import BSD68, CBSD68, BSDTrainDataset, Set12
from .camseq import CamSeqDataset
from .common import DATA_ENV, DENOISING, IGNORE_INDEX, SEGMENTATION, DatasetError, SJDataset
from .demo import DemoDenoising, DemoSegmentation
from .demo3d import DemoSegmentation3D
from .drive import DRIVEDataset
from .em import EMDataset
from .em3d import EM3DDataset
from .options import MAX_SIDE, check_fits, check_options, describe_multiple, image_size, spatial_size
from .patches import predict_by_patches

#: registry name → dataset class (constructor ``cls(root, split, **options)``)
DATASETS: dict[str, type[SJDataset]] = {
    cls.name: cls
    for cls in (
        EMDataset, DRIVEDataset, CamSeqDataset, BSDTrainDataset, Set12, BSD68, CBSD68,
        DemoSegmentation, DemoDenoising, EM3DDataset, DemoSegmentation3D,
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
    ``sigma``…), checked by their declared type and range (:mod:`sjunet.data.options`: ``flip=no``
    is ``False``, ``crop=abc`` is refused). Unknown names, splits or options raise :class:`DatasetError`.
    """
    cls = _lookup(name)
    return cls(root, split, **check_options(cls, options))


def check_dataset_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``--opt`` options of dataset ``name`` (:func:`sjunet.data.options.check_options`) without
    building it: one :class:`DatasetError` line for an unknown dataset or option or a bad value."""
    return check_options(_lookup(name), options)


__all__ = [
    "DATASETS", "TASK_OF", "DATA_ENV", "IGNORE_INDEX", "SEGMENTATION", "DENOISING",
    "DatasetError", "SJDataset", "default_root", "get_dataset", "splits_of", "predict_by_patches",
    "check_dataset_options", "check_fits", "image_size", "spatial_size", "describe_multiple", "MAX_SIDE",
    "EMDataset", "DRIVEDataset", "CamSeqDataset", "BSDTrainDataset", "Set12", "BSD68", "CBSD68",
    "DemoSegmentation", "DemoDenoising", "EM3DDataset", "DemoSegmentation3D",
]  # fmt: skip
