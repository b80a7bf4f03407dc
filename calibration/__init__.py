"""Calibration stage (spec §4): activation statistics of an ANN, written to HDF5.

``calibrate(model, batches, …)`` traces the ANN (BN folded, as the converter sees it), records
for every ReLU output, every ``torch.cat`` and each of its parts, every linear synaptic output
and the network input the p-th percentile over the **whole calibration set** (one pass, exact
nearest rank from a buffer of each tensor's largest values, see :mod:`.percentile`), plus max,
mean, count and a coarse histogram, and writes them atomically to HDF5 (:mod:`.store`).
"""
from sjunet.calibration.observe import RecordedNode, calibrate, recorded_nodes, trace_for_conversion
from sjunet.calibration.percentile import StreamingPercentile
from sjunet.calibration.store import CalibrationStats, StatsMismatchError, TensorStats, read_stats, write_stats

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
