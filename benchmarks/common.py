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
    """Peak resident set size of this process (MB) since :func:`reset_peak_rss` (or its start)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: ``/proc/self/clear_refs`` ← 5 resets VmHWM), so a set-up
    phase's peak cannot hide the measured one; False where the kernel does not allow it (the peak
    then covers the set-up too, and the figure is an upper bound)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


#: glibc's M_MMAP_THRESHOLD mallopt parameter
_M_MMAP_THRESHOLD = -3


def live_memory_allocator(threshold: int = 1 << 16) -> bool:
    """Make this process's resident set track its live tensors (the CPU analogue of CUDA's
    ``max_memory_allocated``): glibc serves every allocation of ≥ ``threshold`` bytes with its own
    mapping, returned to the OS when freed, instead of keeping freed blocks in a fragmented heap.
    For measuring only (it costs 2–2.5× the time of a fine-tuning step: every large tensor is
    page-faulted in afresh). Returns False where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def training_step(method: str, task, x, y, T: int = 0, ann=None, snn=None):
    """One training step of the memory benchmarks as a closure: ``ann`` (an ANN step: forward, loss,
    backward, Adam), ``sim`` (the SNN's spiking flow, recorded, no gradient) or a fine-tuning
    ``method`` of :func:`sjunet.training.flow.train_step` (``flow``, ``bptt``) on the SNN."""
    import torch

    from sjunet.training.flow import record_flow, train_step

    if method == "ann":
        ann.train()
        opt = torch.optim.Adam(ann.parameters(), 1e-4)

        def step():
            loss = task.loss(ann(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    elif method == "sim":
        def step():
            record_flow(snn, x, T)
    else:
        opt = torch.optim.Adam([p for p in snn.parameters() if p.requires_grad], 1e-4)

        def step():
            train_step(snn, opt, task, x, y, T, method=method)
    return step


def measure_steps(step, device: str, iters: int, live: bool) -> dict:
    """Peak memory above the baseline and seconds per step of ``iters + 1`` calls of ``step`` (the
    first also allocates the optimiser's state; its time is not counted): CUDA's
    ``max_memory_allocated``, or on the CPU the process's peak RSS (``live``: with
    :func:`live_memory_allocator`, so RSS follows live tensors). Each figure in its own process."""
    import time

    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
        peak_before = base
        windowed = True
    else:
        base = rss_mb()
        peak_before = peak_rss_mb()
        windowed = reset_peak_rss()
    times = []
    for _ in range(iters + 1):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    return {"seconds": sum(times[1:]) / len(times[1:]), "device": device,
            "memory": "cuda max_memory_allocated" if cuda else ("cpu peak rss (live: large blocks unmapped when freed)"
                                                                if live else "cpu peak rss"),
            "live": live or cuda, "peak_window": windowed,
            "peak_increase_mb": max(peak - base, 0.0), "baseline_mb": base,
            "setup_peak_above_baseline_mb": peak_before - base}


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


def _previous_rows(name: str, profile: str, settings: dict, key: str = "dataset") -> dict[str, dict]:
    """Rows of an earlier run of the same benchmark and settings (row[key] -> row), for resuming."""
    path = RESULTS / f"{name}-{profile}.json"
    if not path.exists():
        return {}
    prev = json.loads(path.read_text())
    if prev.get("settings") != json.loads(json.dumps(settings)):
        return {}
    return {r[key]: r for r in prev.get("rows", [])}


def architecture_rows(bench: str, profile: str, p: dict, architectures: dict, row, table,
                      only: str | None = None) -> list[dict]:
    """The rows of a per-architecture benchmark (``zoo``, ``volume``): the profile's ``archs`` (or
    every one of ``architectures``; ``only``: comma-separated names), each ``row(name, out)`` with
    its cache folder ``results/<bench>-<profile>/<name>/``, the results rewritten (``table(rows)``)
    after each. A row of an earlier run with the same settings, whose cached ANN has the same
    fingerprint, is reused: an interrupted run resumes."""
    from sjunet.models.checkpoint import load_ann

    previous = _previous_rows(bench, profile, p, key="arch")
    names = p.get("archs") or list(architectures)
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in architectures]
    if unknown:
        raise ValueError(f"unknown {bench} architecture(s) {unknown}; choose from {', '.join(architectures)}")
    rows = []
    for name in names:
        out = RESULTS / f"{bench}-{profile}" / name
        out.mkdir(parents=True, exist_ok=True)
        prev = previous.get(name)
        if prev is not None and (out / "ann.pt").exists() and load_ann(
                out / "ann.pt", trust_arch=architectures[name][0])[1]["fingerprint"] == prev["ann_fingerprint"]:
            rows.append(prev)
            continue
        rows.append(row(name, out))
        write_results(bench, profile, table(rows), {"profile": profile, "settings": p, "rows": rows})
    return rows


def architecture_table(bench: str, profile: str, p: dict, architectures: dict, row, table,
                       only: str | None = None) -> dict:
    """A per-architecture benchmark whose result is its table alone (``volume``, ``gap``): the rows of
    :func:`architecture_rows` (``row(name, out)``, ``table(rows)``), the table written once more with
    them. Returns ``{table, rows, path}``."""
    rows = architecture_rows(bench, profile, p, architectures, row, table, only)
    text = table(rows)
    path = write_results(bench, profile, text, {"profile": profile, "settings": p, "rows": rows})
    return {"table": text, "rows": rows, "path": str(path)}


def cached_ann(opts, factory: str | None):
    """The ANN ``opts`` (a :class:`sjunet.training.ann.TrainOptions`) trains, cached in ``opts.output``:
    reused when the file was trained with the same options (output, device and data directory
    aside), else trained again. ``factory``: the architecture the benchmark chose (trusted, so the
    file's own name for it is not needed). Returns ``(ann, checkpoint)``."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from sjunet.models.checkpoint import load_ann
    from sjunet.training import train

    path = Path(opts.output)
    same = {k: v for k, v in json.loads(json.dumps(asdict(opts))).items() if k not in ("output", "device", "data")}
    if path.exists():
        ann, ckpt = load_ann(path, trust_arch=factory)
        stored = json.loads(json.dumps({k: ckpt["options"].get(k) for k in same}))  # tuples as the lists above
        if isinstance(stored.get("class_weights"), dict):  # recorded resolved: {"spec": "auto", "weights": …}
            stored["class_weights"] = stored["class_weights"].get("spec")
        if stored == same:
            return ann, ckpt
    train(opts, progress=False, force=True)
    return load_ann(path, trust_arch=factory)


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
    (label -> an ``evaluate_snn`` result), the ANN dashed (``sjunet.plots.curves.metric_vs_T``)."""
    from sjunet.plots.curves import metric_vs_T

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


def interleaved_medians(runs: dict, reps: int, sync=lambda: None) -> tuple[dict[str, float], dict[str, list]]:
    """Median seconds of each callable in ``runs`` over ``reps`` interleaved repetitions (one
    untimed warm-up each first; ``sync`` waits for the device), so load drifts hit all alike;
    returns ``(medians, every time)``."""
    import statistics
    import time

    times: dict[str, list[float]] = {k: [] for k in runs}
    for f in runs.values():
        f()
        sync()
    for _ in range(reps):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, times



#: the parts of a step the profile breakdown reports
PARTS = ("conv", "neuron", "plumbing")


def _part_of(m) -> str | None:
    """The part a module's own work belongs to: synaptic layers (convolutions, transposed ones,
    linear layers) ``conv``; neurons — and in an ANN its activations — ``neuron``; None for the rest
    (plumbing: pooling, concatenation, padding, norms, gains, joins and everything between modules);
    ``fused`` for a convolution fused with its neuron (:mod:`sjunet.snn.fusion`), whose convolution
    :func:`step_breakdown` counts as ``conv`` and the rest (the neuron's firing, a centre's means) as
    ``neuron``."""
    from spikingjelly.activation_based import neuron as sj_neuron
    from torch import nn

    from sjunet.layers.dims import CONV_T_TYPES, CONV_TYPES
    from sjunet.neurons import is_neuron

    from sjunet.snn.fusion import IntegratingConv

    if isinstance(m, IntegratingConv):
        return "fused"
    if isinstance(m, CONV_TYPES + CONV_T_TYPES + (nn.Linear,)):
        return "conv"
    if is_neuron(m) or isinstance(m, (sj_neuron.BaseNode, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.ELU,
                                      nn.GELU, nn.SiLU, nn.Hardtanh)):
        return "neuron"
    return None


def step_breakdown(run) -> dict[str, float]:
    """Shares of ``run()``'s CPU time (``torch.profiler``, self time of every op) spent in
    convolutions, neurons (an ANN: activations) and plumbing (everything else), by the innermost
    module an op runs in: every module of a part — of any network ``run`` calls, including the
    graph calibration traces — is wrapped in a ``record_function`` range by global forward hooks
    for the profiled run; a range the library itself names ``sjunet.part::<name>`` (calibration's
    ``statistics``) is a part of its own. Returns the shares (summing to 1) and ``seconds`` (the
    profiled run's CPU time, profiler overhead included)."""
    import torch
    from torch.nn.modules import module as nn_module
    from torch.profiler import ProfilerActivity, profile, record_function

    open_ranges: dict[int, list] = {}

    def pre(mod, args):
        part = _part_of(mod)
        if part is not None:
            r = record_function(f"sjunet.part::{part}")
            open_ranges.setdefault(id(mod), []).append(r)
            r.__enter__()

    def post(mod, args, out):
        stack = open_ranges.get(id(mod))
        if stack:
            stack.pop().__exit__(None, None, None)

    handles = [nn_module.register_module_forward_pre_hook(pre), nn_module.register_module_forward_hook(post)]
    try:
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
    finally:
        for h in handles:
            h.remove()
    totals = dict.fromkeys(PARTS, 0.0)
    for e in prof.events():
        part, p = "plumbing", e
        while p is not None:
            if p.name.startswith("sjunet.part::"):  # ours, or a range the library labels (statistics)
                part = p.name.split("::", 1)[1]
                break
            p = p.cpu_parent
        if part == "fused":
            part = "conv" if "convolution" in e.name else "neuron"
        totals[part] = totals.get(part, 0.0) + e.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {**{k: v / whole for k, v in totals.items()}, "seconds": whole / 1e6}
