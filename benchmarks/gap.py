"""The approximation gap, estimated against measured on held-out data (spec §11, issue 26).

A U-Net with instance/group norms converts with a fixed deviation σ̂ per channel; what that costs
the ANN itself is the *approximation gap*. ``calibrate`` used to estimate it by 5-fold
cross-validation over the calibration samples ("old"); it now measures it on samples held apart
from the σ̂ fit — the validation split, whole as evaluation reads it, the calibration split leaving
those images out ("new", ``sjunet calibrate --gap-split val``) — with a 95 % bootstrap interval.
Each row trains an ANN briefly, calibrates it both ways and measures the gap each stored σ̂ really
has on the test split (``held-out``, with its interval over the test images): relative L2 error of
the logits and pixel agreement of the exact ANN against the ANN with fixed deviations. Two
calibration inputs per 2-D model: whole training images (the CLI's default) and 128×128 crops (a
``--opt crop=128`` calibration, whose σ̂ is fit on another input size than the test images); the
3-D row calibrates on crops of the training block (em3d's default) and is held out on the whole
test volume.

    python -m sjunet.benchmarks gap --profile smoke|cpu [--data ../shared/data] [--only a,b]

ANNs are cached per architecture under ``results/gap-<profile>/<arch>/`` and finished rows reused
(:func:`benchmarks.common.architecture_rows`).
"""
from __future__ import annotations

import time
from pathlib import Path

#: name -> (architecture factory, kwargs given the width, 3-D)
ARCHITECTURES = {
    "monai-BasicUNet-defaults": ("monai.networks.nets:BasicUNet", lambda w: dict(
        spatial_dims=2, in_channels=1, out_channels=2, features=(w, w, 2 * w, 4 * w, 8 * w, w)), False),
    "monai-UNet-defaults": ("monai.networks.nets:UNet", lambda w: dict(  # PReLU + InstanceNorm
        spatial_dims=2, in_channels=1, out_channels=2, channels=(w, 2 * w, 4 * w, 8 * w, 16 * w), strides=(2, 2, 2, 2)),
        False),
    "monai-DynUNet-defaults": ("monai.networks.nets:DynUNet", lambda w: dict(  # LeakyReLU + InstanceNorm
        spatial_dims=2, in_channels=1, out_channels=2, kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2],
        upsample_kernel_size=[2] * 4, filters=(w, 2 * w, 4 * w, 8 * w, 16 * w)), False),
    "monai-BasicUNet-3d-defaults": ("monai.networks.nets:BasicUNet", lambda w: dict(
        spatial_dims=3, in_channels=1, out_channels=2, features=(w, w, 2 * w, 4 * w, 8 * w, w)), True),
}

PROFILES = {
    "smoke": dict(dataset="demo-seg", data_options={"size": 32, "num_items": 6}, train_options={}, width=4,
                  epochs=1, train_minutes=None, batch=3, lr=5e-3, calibrations={"whole": {}},
                  archs=["monai-BasicUNet-defaults"]),
    "cpu": dict(dataset="em", data_options={}, train_options={"crop": 128, "samples_per_epoch": 160}, width=16,
                epochs=200, train_minutes=4.0, batch=4, lr=1e-3,
                calibrations={"whole": {}, "crops": {"crop": 128, "samples_per_epoch": 100}},
                volume=dict(dataset="em3d", data_options={}, train_options={"crop": [16, 64, 64], "samples_per_epoch": 64},
                            width=8, epochs=200, train_minutes=4.0, batch=4, lr=2e-3,
                            calibrations={"crops": {"crop": [16, 64, 64], "samples_per_epoch": 32}})),
}


def _settings(name: str, p: dict) -> dict:
    return p["volume"] if ARCHITECTURES[name][2] and "volume" in p else p


def _ann(name: str, p: dict, out: Path, data, device: str):
    from sjunet.training import TrainOptions

    from .common import cached_ann

    factory, kwargs, _ = ARCHITECTURES[name]
    opts = TrainOptions(dataset=p["dataset"], data=data, output=str(out / "ann.pt"), epochs=p["epochs"],
                        batch_size=p["batch"], optimizer="adam", lr=p["lr"], max_minutes=p["train_minutes"],
                        device=device, seed=0, dataset_options={**p["data_options"], **p["train_options"]},
                        arch=factory, arch_kwargs=kwargs(p["width"]))
    return cached_ann(opts, factory)


def _held_out(ann, stats, items, post) -> dict:
    """The gap ``stats``'s σ̂ has on ``items`` (whole test images or volumes, padded to the graph's
    size multiples as evaluation pads them): :func:`sjunet.calibration.approximation.measure_gap`."""
    import torch

    from sjunet.calibration.approximation import approximated_ann, measure_gap, pad_to_multiples
    from sjunet.snn import size_rule

    approx = approximated_ann(ann, stats)
    m = size_rule(ann, items[0].shape[0])
    multiples = m if isinstance(m, tuple) else (m,) * (items[0].dim() - 1)

    def pair(x):
        crop = (..., *(slice(0, n) for n in x.shape[1:]))
        xp = pad_to_multiples(x[None], multiples)
        with torch.no_grad():
            return ann(xp)[crop], approx(xp)[crop]

    return measure_gap((pair(x) for x in items), post)


def _row(name: str, profile: dict, out: Path, data, device: str) -> dict:
    import warnings

    from torch.utils.data import DataLoader

    from sjunet.calibration import calibrate
    from sjunet.data import get_dataset
    from sjunet.graph import canonical_graph
    from sjunet.training.run import TRAIN_ONLY_OPTIONS, _keyword_options

    p = _settings(name, profile)
    t0 = time.perf_counter()
    ann, ckpt = _ann(name, p, out, data, device)
    ds, opts = p["dataset"], p["data_options"]
    test = [x for x, _ in get_dataset(ds, data, "test", **opts)]
    val = get_dataset(ds, data, "val", **{k: v for k, v in opts.items() if k not in TRAIN_ONLY_OPTIONS})
    holdout = {"holdout_val": True} if "holdout_val" in _keyword_options(ds) else {}
    row = {"arch": name, "dataset": ds, "ann_fingerprint": ckpt["fingerprint"], "calibrations": {}}
    for cal, cal_opts in p["calibrations"].items():
        train_all = get_dataset(ds, data, "train", **{**opts, **cal_opts})
        train_cal = get_dataset(ds, data, "train", **{**opts, **cal_opts, **holdout})
        post = canonical_graph(ann, (1, *train_all[0][0].shape)).post
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old = calibrate(ann, DataLoader(train_all, batch_size=p["batch"]), progress=False, device=device)
            new = calibrate(ann, DataLoader(train_cal, batch_size=p["batch"]), progress=False, device=device,
                            gap_data=DataLoader(val, batch_size=1), gap_description="val-split")
        row["calibrations"][cal] = {
            "calibration_items": [len(train_all), len(train_cal)], "val_items": len(val), "test_items": len(test),
            "old": old.approximation, "old_held_out": _held_out(ann, old, test, post),
            "new": new.approximation, "new_held_out": _held_out(ann, new, test, post)}
    row["minutes"] = (time.perf_counter() - t0) / 60
    return row


def _cell(a: dict, key: str, fmt: str, interval: bool = True) -> str:
    v = a.get(key) if key != "disagreement" else (None if a.get("agreement") is None else 1 - a["agreement"])
    if v is None:
        return "–"
    iv = (a.get("interval") or {}).get("agreement" if key == "disagreement" else key)
    if interval and iv:
        lo, hi = (1 - iv[1], 1 - iv[0]) if key == "disagreement" else iv
        return f"{v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"
    return f"{v:{fmt}}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "–"


def _table(rows: list[dict], p: dict) -> str:
    from sjunet.calibration.gap import gap_reasons

    lines = ["Approximation gap: estimate against the gap measured on the test split (held-out) for the same σ̂; "
             "[95 % interval: bootstrap over the images]. old = 5-fold cross-validation on the calibration items "
             "(before issue 26), new = validation split held apart from the σ̂ fit. Relative L2 error of the logits, "
             "then 1 − pixel agreement.", "",
             "| architecture | calibration | rel. error old | held-out (old σ̂) | old / held-out | rel. error new "
             "| held-out (new σ̂) | new / held-out | 1 − agreement new | held-out | new / held-out | gate new |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for cal, c in r["calibrations"].items():
            old, oh, new, nh = c["old"], c["old_held_out"], c["new"], c["new_held_out"]
            dis = [None if a.get("agreement") is None else 1 - a["agreement"] for a in (new, nh)]
            gate = "passes" if not gap_reasons(new) else "refuses"
            lines.append(
                f"| {r['arch']} | {cal} ({c['calibration_items'][0]} → {c['calibration_items'][1]} items; "
                f"val {c['val_items']}, test {c['test_items']}) | {_cell(old, 'relative_error', '.3f', False)} | "
                f"{_cell(oh, 'relative_error', '.3f')} | {_ratio(old['relative_error'], oh['relative_error'])} | "
                f"{_cell(new, 'relative_error', '.3f')} | {_cell(nh, 'relative_error', '.3f')} | "
                f"{_ratio(new['relative_error'], nh['relative_error'])} | {_cell(new, 'disagreement', '.4f')} | "
                f"{_cell(nh, 'disagreement', '.4f')} | {_ratio(*dis)} | {gate} |")
    return "\n".join(lines)


def run(profile: str = "cpu", model=None, data=None, device: str = "cpu", only: str | None = None) -> dict:
    """The gap table (``only``: comma-separated architectures)."""
    from .common import architecture_table

    p = dict(PROFILES[profile])
    return architecture_table("gap", profile, p, ARCHITECTURES, lambda name, out: _row(name, p, out, data, device),
                              lambda rows: _table(rows, p), only)
