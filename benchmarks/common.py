"""Shared pieces of the benchmarks: profiles, subprocess workers, peak-memory probes, result files."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

#: where tables land (override with $SJUNET_RESULTS, e.g. on a machine where the package is read-only)
RESULTS = Path(os.environ.get("SJUNET_RESULTS", Path(__file__).resolve().parent / "results"))


def rss_mb() -> float:
    """Current resident set size (MB), from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(module: str, config: dict, timeout: float = 3600) -> dict:
    """Run ``python -m <module> --worker <json>`` in a fresh process (its own memory peak);
    the worker prints one JSON line last."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    p = subprocess.run([sys.executable, "-m", module, "--worker", json.dumps(config)], capture_output=True,
                       text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"worker {module} failed for {config}:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def write_results(name: str, profile: str, table_md: str, payload: dict) -> Path:
    """Write ``<name>-<profile>.md`` and ``.json`` under benchmarks/results (atomically)."""
    from sjunet.io import provenance, write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    md = RESULTS / f"{name}-{profile}.md"
    from sjunet.io import atomic_path

    with atomic_path(md) as tmp:
        tmp.write_text(table_md + "\n")
    write_json({**payload, "provenance": provenance()}, RESULTS / f"{name}-{profile}.json")
    return md


def matching_stats(ann, path: str | os.PathLike):
    """The calibration statistics at ``path`` if that file exists and was computed for ``ann``, else None."""
    from sjunet.calibration import read_stats
    from sjunet.io import model_fingerprint

    if not Path(path).exists():
        return None
    stats = read_stats(path)
    return stats if stats.model_fingerprint == model_fingerprint(ann) else None


def cached_stats(ann, path: str | os.PathLike, dataset: str, data, options: dict, device: str = "cpu",
                 batch_size: int = 4):
    """:func:`matching_stats` at ``path``, or else calibrate ``ann`` on ``dataset``'s training split
    and write the statistics there."""
    from torch.utils.data import DataLoader

    from sjunet.calibration import calibrate
    from sjunet.data import get_dataset

    stats = matching_stats(ann, path)
    if stats is not None:
        return stats
    ds = get_dataset(dataset, data, "train", **options)
    return calibrate(ann, DataLoader(ds, batch_size=batch_size), output=path, device=device, progress=False,
                     data_description={"dataset": dataset, "split": "train", **ds.describe()})


def write_metric_figure(name: str, profile: str, results: dict, metric: str, title: str) -> Path:
    """``<name>-<profile>.png`` beside the table: ``metric`` against T, one line per evaluated SNN
    (label -> an ``evaluate_snn`` result), the ANN dashed (``sjunet.curves.metric_vs_T``)."""
    from sjunet.curves import metric_vs_T

    path = RESULTS / f"{name}-{profile}.png"
    metric_vs_T(list(results.values()), metric=metric, output=path, labels=list(results), title=title)
    return path


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0."""
    return a / b if b else float("nan")


def hard_key(ann_metrics: dict, keys: list[str]) -> str:
    """The metric an SNN/ANN ratio is reported for: the lowest ANN F1 (the hard, minority class:
    membrane for EM, vessel for DRIVE), else the first key (PSNR)."""
    f1 = [k for k in keys if k.startswith("f1_")]
    return min(f1, key=lambda k: ann_metrics[k]) if f1 else keys[0]
