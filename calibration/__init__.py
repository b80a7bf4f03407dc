"""Calibration stage (spec §4): activation statistics of an ANN, written to HDF5.

``calibrate(model, batches, …)`` traces the ANN (BN folded, as the converter sees it), records
for every ReLU output, every ``torch.cat`` and each of its parts, every linear synaptic output
and the network input the p-th percentile over the **whole calibration set** (one pass, exact
nearest rank from a buffer of each tensor's largest values, see :mod:`.percentile`), plus max,
mean, count and a coarse histogram, and writes them atomically to HDF5.

The parts: :mod:`.observe` (what is recorded, :func:`calibrate`), :mod:`.percentile` (the streaming
percentile), :mod:`.approximation` (instance/group/layer norms: the fixed deviation and its gap, estimated on data
not used to fit it), :mod:`.gap` (the gate a conversion passes on that gap),
:mod:`.store` (the HDF5 schema, :class:`CalibrationStats`, :func:`write_stats`), :mod:`.reader`
(:func:`read_stats`: a file is data, checked before it is used) and :mod:`.hdf5_bounds` (what libhdf5
would allocate or walk, read from the raw file before h5py touches it). A new recorded statistic is a field
of :class:`TensorStats` (written in :mod:`.store`, checked in :mod:`.reader`); tests: ``tests/calibration/``.
This folder is installed as ``sjunet.calibration`` (setup.cfg).
"""
from sjunet.calibration.observe import RecordedNode, calibrate, recorded_nodes, trace_for_conversion
from sjunet.calibration.percentile import StreamingPercentile
from sjunet.calibration.reader import read_stats
from sjunet.calibration.store import CalibrationStats, StatsMismatchError, TensorStats, write_stats

__all__ = [
    "CalibrationStats",
    "RecordedNode",
    "StatsMismatchError",
    "StreamingPercentile",
    "TensorStats",
    "calibrate",
    "read_stats",
    "recorded_nodes",
    "trace_for_conversion",
    "write_stats",
]
