"""What the table benchmarks share (:mod:`.paper_tables`, :mod:`.finetune_table`, :mod:`.peer_table`,
:mod:`.energy_frontier`, :mod:`.zoo`): the datasets of the paper's tables and the paper tables'
profiles, whose cached ANN and statistics the other tables reuse (:func:`_prepare`), evaluation
options, metric keys, resuming from an earlier run's rows, per-dataset profile settings
(:func:`val_limit`) and one spiking-flow fine-tuning run with its summary (:func:`_finetune`).

A leaf of the benchmarks: it imports only :mod:`.common` (inside functions, so a test's
``common.RESULTS`` applies), and every table module imports downward from here.
"""
from __future__ import annotations

import time
from dataclasses import asdict

#: dataset name -> (test dataset, train dataset, train options, test options, paper T, metric keys)
DATASETS = {
    "drive": dict(test="drive", train="drive", T=10, train_opts={}, test_opts={}),
    "em": dict(test="em", train="em", T=50, train_opts={"crop": 128, "samples_per_epoch": 160}, test_opts={}),
    "camseq": dict(test="camseq", train="camseq", T=20, train_opts={}, test_opts={}),
    "bsd68": dict(test="bsd68", train="bsd", T=10, train_opts={"color": False, "crop": 96, "samples_per_epoch": 400},
                  test_opts={"sigma": 25}),
    "cbsd68": dict(test="cbsd68", train="bsd", T=20, train_opts={"color": True, "crop": 96, "samples_per_epoch": 400},
                   test_opts={"sigma": 25}),
    # the volume of spec §14: sjunet's U-Net in 3-D (one [1, 30, 512, 256] test item); narrower and
    # shallower than the 2-D profiles' (``model``), so it trains on the CPU in the same minutes
    "em3d": dict(test="em3d", train="em3d", T=8, train_opts={"crop": [16, 64, 64], "samples_per_epoch": 64},
                 test_opts={}, model={"width": 8, "depth": 3}),
    "demo-seg": dict(test="demo-seg", train="demo-seg", T=8, train_opts={"size": 32, "num_items": 16},
                     test_opts={"size": 32, "num_items": 16}),
    "demo-denoise": dict(test="demo-denoise", train="demo-denoise", T=8, train_opts={"crop": 32, "samples_per_epoch": 32},
                         test_opts={"eval_crop": 32}),
}

#: the paper tables' profiles (``tables12``, ``ladders``, ``ablation``); the other tables train and reuse
#: their ANNs through ``ann_profile``
PROFILES = {
    "smoke": dict(datasets=["demo-seg", "demo-denoise"], width=8, depth=2, train_minutes=0.3, epochs=30, lr=5e-3,
                  ft_minutes=0.1, ft_epochs=1, limit=2, batch=4),
    "cpu": dict(datasets=["em", "drive", "camseq", "bsd68", "cbsd68"], width=16, depth=4, train_minutes=6.0, lr=1e-3,
                epochs=200, ft_minutes=2.0, ft_epochs=10, limit=5, batch=8),
    "paper": dict(datasets=["drive", "em", "camseq", "bsd68", "cbsd68"], width=64, depth=4, train_minutes=None, lr=1e-3,
                  epochs=200, ft_minutes=None, ft_epochs=100, limit=None, batch=8),
    # one H100/H200 (--device cuda): width 64, each dataset ≤ ~10 GPU-minutes (6 ANN + 2 fine-tuning + evaluation);
    # width-64 ANN training with warm-up, cosine decay and clipping (Adam 1e-3 alone collapsed at epoch 25)
    "gpu": dict(datasets=["drive", "em", "camseq", "bsd68", "cbsd68"], width=64, depth=4, train_minutes=6.0, lr=5e-4,
                epochs=200, ft_minutes=2.0, ft_epochs=100, limit=None, batch=8, schedule="cosine", warmup=200,
                grad_clip=1.0),
}


#: the paper tables (``tables12``, ``ablation``, ``ladders``, ``peers``) convert MT neurons with the paper's
#: ladder, named — Table 4's (2, 1, 0.5, 0.25) — so their numbers reproduce the paper's setting and do
#: not move with sjunet's default (per-layer ladders, ``python -m sjunet.benchmarks ladderstudy``)
PAPER_LADDER = "paper"


def paper_ladder(neuron: str) -> str | None:
    """The ``thresholds`` a paper table converts ``neuron`` with: the paper's ladder for MT, the
    neuron's own otherwise (IF: 1; ML, RS: theirs)."""
    return PAPER_LADDER if neuron == "mt" else None


def _ann(p: dict, name: str, data, device: str, profile: str) -> tuple[str, object]:
    from sjunet.models.checkpoint import load_ann
    from sjunet.training import TrainOptions, train

    from .common import RESULTS

    d = DATASETS[name]
    out = RESULTS / profile / name
    path = out / "ann.pt"
    if not path.exists():
        train(TrainOptions(dataset=d["train"], data=data, output=str(path), epochs=p["epochs"], batch_size=p["batch"],
                           width=d.get("model", {}).get("width", p["width"]),
                           depth=d.get("model", {}).get("depth", p["depth"]), device=device, max_minutes=p["train_minutes"],
                           optimizer="adam", lr=p["lr"], dataset_options=d["train_opts"],
                           schedule=p.get("schedule", "constant"), warmup=p.get("warmup", 0),
                           grad_clip=p.get("grad_clip")), progress=False, force=True)
    return str(path), load_ann(path)[0]


def _stats(ann, name: str, data, device: str, profile: str):
    from .common import RESULTS, cached_stats

    d = DATASETS[name]
    return cached_stats(ann, RESULTS / profile / name / "stats.h5", d["train"], data, d["train_opts"], device)


def _prepare(profile: str, dataset: str | None, data, device: str):
    """Profile, dataset name and spec, and the (trained or cached) ANN with its statistics."""
    p = PROFILES[profile]
    name = dataset or p["datasets"][0]
    ann_path, ann = _ann(p, name, data, device, profile)
    return p, name, DATASETS[name], ann, _stats(ann, name, data, device, profile)


def _eval_options(p: dict, ann, device: str) -> dict:
    """Keyword arguments of ``evaluate_snn`` shared by every table: agreement with ``ann``, the
    profile's image limit, no progress bar."""
    return dict(reference=ann, limit=p["limit"], multiple=ann.size_multiple, progress=False, device=device)


def _metric_keys(m: dict) -> list[str]:
    f1 = [k for k in m if k.startswith("f1_")]
    if f1:
        return [min(f1, key=lambda k: m[k])]  # the hard class (vessel, membrane)
    if "miou" in m:
        return ["miou"]
    return ["psnr", "ssim"]


def val_limit(setting, dataset: str):
    """A profile's (validation or test) image limit for ``dataset``: a number, or per dataset
    (``"*"``: the rest); None: every image. Validation and test are whole images on every data set."""
    return setting.get(dataset, setting.get("*")) if isinstance(setting, dict) else setting


def _finetune(snn_path, out, d: dict, data, T: int, device: str, budget: dict, **recipe) -> dict:
    from sjunet.conversion.recipe import load_snn
    from sjunet.training.finetuning import FinetuneOptions, finetune

    t0 = time.perf_counter()
    opts = FinetuneOptions(dataset=d["train"], data=data, output=str(out), T=T,
                           batch_size=budget["batch"], device=device, val_limit=budget.get("val_limit"),
                           epochs=budget.get("epochs", 50), max_minutes=budget.get("minutes"),
                           max_iters=budget.get("iters"), dataset_options=d["train_opts"],
                           **({"lr_trial_iters": budget["trial_iters"], **recipe} if "trial_iters" in budget else recipe))
    _, s = finetune(load_snn(snn_path)[0], opts, progress=False, force=True)
    return {"minutes": (time.perf_counter() - t0) / 60, "timing": s["timing"], "improved": s["improved"], "kept": s["kept"],
            "lr": s["lr"], "lr_trials": s["lr_trials"], "steps": s["step"],
            "val_before": s["baseline"]["score"], "val_after": s["best"]["score"], "options": {"snn": str(snn_path), **asdict(opts)}}

