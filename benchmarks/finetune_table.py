"""Fine-tuning benchmarks (the issue "fine-tuning that always helps").

* ``finetune`` — per dataset (EM, DRIVE, BSD68 σ = 25, CamSeq01 in the cpu profile): ANN vs
  converted (connection-wise, MT) vs spiking-flow fine-tuned SNN at T = 1, 2, 4 and the dataset's
  target T, with the library's default recipe (:class:`sjunet.training.finetuning.FinetuneOptions`), the
  minutes each fine-tuning took, and whether it improved on its input (it is never worse on the
  validation split by construction).
* ``ftrecipe`` — the ablation that chose that recipe: objective (label loss, distillation from the
  ANN, both) × learning rate (fixed or ``auto``), on DRIVE (the retinal set where width 64 broke
  the old default) at T = 4, at widths 16 and 64.
* ``ftladder`` — the ``finetune`` table at T = 1 and 2 on EM, DRIVE and BSD68 with Theorem 3.1's threshold
  ladder (``thresholds="theorem"``: 0.5, 0.25, 0.125, 0.0625) instead of the paper's (2, 1, 0.5, 0.25).

Every row reports the validation score fine-tuning chose on (the input's → the kept one) beside
the test images' before / after, on the data set's headline metric, every image whole.

The ANNs and statistics are those of the paper tables (``benchmarks/results/<profile>/<dataset>/``,
trained there if missing); every (dataset, T) row is cached in the results JSON, so an interrupted
run resumes where it stopped.

    python -m sjunet.benchmarks finetune --profile cpu --data ../shared/data [--dataset em,drive]
    python -m sjunet.benchmarks ftrecipe --profile cpu --data ../shared/data
    python -m sjunet.benchmarks ftladder --profile cpu --data ../shared/data
"""
from __future__ import annotations

from .tables_common import _finetune, val_limit

PROFILES = {
    "smoke": dict(datasets=["demo-seg", "demo-denoise"], T=[1, 2], extra_T={}, ann_profile="smoke", ft_minutes=0.05,
                  ft_epochs=1, batch=4, limit=2, val_limit=2, trial_iters=2),
    "cpu": dict(datasets=["em", "drive", "bsd68", "camseq"], T=[1, 2, 4], extra_T={"bsd68": [5], "camseq": [10]},
                ann_profile="cpu", ft_minutes=3.0, ft_epochs=50, batch=4, limit=None, val_limit=None),
    "gpu": dict(datasets=["em", "drive", "bsd68", "camseq"], T=[1, 2, 4], extra_T={"bsd68": [5], "camseq": [10]},
                ann_profile="gpu", ft_minutes=2.0, ft_epochs=100, batch=8, limit=None, val_limit=None),
    "paper": dict(datasets=["em", "drive", "bsd68", "camseq"], T=[1, 2, 4], extra_T={"bsd68": [5], "camseq": [10]},
                  ann_profile="paper", ft_minutes=10.0, ft_epochs=100, batch=8, limit=None, val_limit=None),
}

#: ``ftladder``: the fine-tuning table with Theorem 3.1's ladder at low T (EM and DRIVE; cached ANNs reused)
LADDER_PROFILES = {name: {**p, "T": [1, 2], "extra_T": {}, "ladder": "theorem",
                          **({"datasets": ["em", "drive", "bsd68"]} if name != "smoke" else {"T": [1]})}
                   for name, p in PROFILES.items()}

#: the recipe ablation: per width, the objectives and learning rates tried ("auto": lr_range_test)
RECIPE_PROFILES = {
    "smoke": dict(dataset="demo-seg", T=2, iters=6, val_limit=2, ann_profile="smoke", ann_minutes=0.3, trial_iters=2,
                  arms=[dict(width=8, losses=["label", "both"], lrs=[1e-4, "auto"], limit=2)]),
    "cpu": dict(dataset="drive", T=4, iters=150, val_limit=None, ann_profile="cpu", ann_minutes=12.0, trial_iters=20,
                arms=[dict(width=16, losses=["label", "distill", "both"], lrs=[1e-5, 1e-4, 1e-3, "auto"], limit=3),
                      dict(width=64, losses=["label", "both"], lrs=[1e-5, 1e-4, "auto"], limit=1)]),
    "paper": dict(dataset="drive", T=4, iters=600, val_limit=None, ann_profile="paper", ann_minutes=30.0,
                  trial_iters=40,
                  arms=[dict(width=w, losses=["label", "distill", "both"], lrs=[1e-5, 1e-4, 1e-3, "auto"], limit=None)
                        for w in (16, 64)]),
}



def _ladder_of(snn):
    """The ladder a row's SNN was converted with: a list, or ``"auto"`` (a ladder per layer)."""
    t = snn.record.conversion.thresholds
    return t if isinstance(t, str) else list(t or [])

def _key(r: dict) -> str:
    """A row's headline metric (the one fine-tuning selects on: :attr:`sjunet.tasks.SegmentationTask.metric`)."""
    return r["metric"]


def run(profile: str = "cpu", model=None, data=None, device: str = "cpu", dataset: str | None = None) -> dict:
    """``finetune``: the table with the default threshold ladder (module docstring)."""
    return _run("finetune", PROFILES[profile], profile, data, device, dataset)


def ladder(profile: str = "cpu", model=None, data=None, device: str = "cpu", dataset: str | None = None) -> dict:
    """``ftladder``: the same table with Theorem 3.1's ladder (``thresholds="theorem"``, 0.5 … 0.0625)
    at T = 1 and 2 on EM, DRIVE and BSD68 — the low-T regime where the paper's ladder leaves a bit idle."""
    return _run("ftladder", LADDER_PROFILES[profile], profile, data, device, dataset)


def _run(bench: str, p: dict, profile: str, data, device: str, dataset: str | None) -> dict:
    from sjunet.conversion.recipe import convert, load_snn, save_snn
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_snn
    from sjunet.tasks import task_for

    from .common import RESULTS, write_results
    from .common import _previous_rows
    from .tables_common import _eval_options, _prepare

    names = [n.strip() for n in dataset.split(",")] if dataset else p["datasets"]
    ladder = p.get("ladder")
    tag = f"_{ladder}" if ladder else ""
    previous = {(r["dataset"], r["T"]): r for r in _previous_rows(bench, profile, p, key="id").values()}
    rows: list[dict] = []
    for name in names:
        pa, _, d, ann, stats = _prepare(p["ann_profile"], name, data, device)
        ev = _eval_options({**pa, "limit": val_limit(p["limit"], name)}, ann, device)
        test = get_dataset(d["test"], data, "test", **d["test_opts"])
        task = task_for(test)
        out = RESULTS / p["ann_profile"] / name / "finetune"
        out.mkdir(parents=True, exist_ok=True)
        for T in p["T"] + p["extra_T"].get(name, []):
            prev = previous.get((name, T))
            if prev is not None and prev["ann_fingerprint"] == stats.model_fingerprint and "metric" in prev:
                rows.append(prev)
                continue
            snn = convert(ann, stats, thresholds=ladder)
            path = save_snn(snn, out / f"snn{tag}_T{T}.safetensors")
            conv = evaluate_snn(snn, test, [T], task, **ev)
            ft = _finetune(path, out / f"ft{tag}_T{T}.safetensors", d, data, T, device,
                           {"batch": p["batch"], "val_limit": val_limit(p["val_limit"], name), "epochs": p["ft_epochs"],
                            "minutes": p["ft_minutes"], **({"trial_iters": p["trial_iters"]} if "trial_iters" in p else {})})
            after = evaluate_snn(load_snn(out / f"ft{tag}_T{T}.safetensors")[0], test, [T], task, **ev)
            rows.append({"id": f"{name}@{T}", "dataset": name, "T": T, "ann_fingerprint": stats.model_fingerprint,
                         "thresholds": _ladder_of(snn),
                         "metric": task.metric, "test_images": len(test) if ev["limit"] is None else ev["limit"],
                         "ann": conv["ann"], "converted": conv["T"][str(T)], "finetuned": after["T"][str(T)], **ft})
            write_results(bench, profile, _table(rows, p, profile), {"profile": profile, "settings": p, "rows": rows})
    table = _table(rows, p, profile)
    path = write_results(bench, profile, table, {"profile": profile, "settings": p, "rows": rows})
    return {"table": table, "rows": rows, "path": str(path)}


def _cells(r: dict) -> tuple[str, float, str, str]:
    """A row's metric key, ANN value, and converted / fine-tuned test cells ``value (× ANN)``."""
    from .common import ratio

    k = _key(r)
    a, c, f = r["ann"][k], r["converted"][k], r["finetuned"][k]
    return k, a, f"{c:.4f} ({ratio(c, a):.3f})", f"{f:.4f} ({ratio(f, a):.3f})"


def carried(val_change: float, test_change: float, improved: bool) -> str:
    """Validation-to-test agreement of a kept checkpoint: "yes" when the test change has the
    validation change's sign, "no" when not, "=" when the input was kept (nothing changed)."""
    if not improved:
        return "="
    return "yes" if (val_change > 0) == (test_change > 0) else "no"


def _table(rows: list[dict], p: dict, profile: str) -> str:
    ladder = (f"threshold ladder {p['ladder']!r}" if p.get("ladder")
              else "the default threshold ladders (one per layer, sjunet.conversion.ladders)")
    lines = [f"Spiking-flow fine-tuning ({profile} profile; {ladder}; default recipe; budget {p['ft_minutes']} min per T, lr "
             "auto included; whole images; cells: value (× ANN)). The checkpoint is chosen on validation (its "
             "before → after on the left); test is reported, never used to choose. *val → test*: whether the kept "
             "checkpoint's validation change carried over to the test images with its sign (= when the input was "
             "kept: both changes are 0). *clock*: minutes by the clock of the lr trials (their validations "
             "included) + training, then the set-up (data, validation of the input) not charged to the budget.", "",
             "| dataset | metric | T | validation: input → kept | ANN (test) | converted (test) | fine-tuned (test) | "
             "test change | val → test | kept | lr | steps | clock: trials + training; set-up (min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k, a, conv, ft = _cells(r)
        delta = r["finetuned"][k] - r["converted"][k]
        tm = r.get("timing") or {}
        clock = (f"{tm.get('lr_trials', 0):.2f} + {tm.get('training', 0):.2f} = "
                 f"{tm.get('lr_trials', 0) + tm.get('training', 0):.2f}; "
                 f"{tm.get('setup', 0) + tm.get('baseline_validation', 0):.2f}" if tm else f"{r['minutes']:.1f} in all")
        lines.append(f"| {r['dataset']} | {k} | {r['T']} | {r['val_before']:.4f} → {r['val_after']:.4f} | {a:.4f} | "
                     f"{conv} | {ft} | {delta:+.4f} | {carried(r['val_after'] - r['val_before'], delta, r['improved'])} | "
                     f"{'fine-tuned' if r['improved'] else 'input'} | {r['lr']:g} | {r['steps']} | {clock} |")
    n = {r["dataset"]: r.get("test_images") for r in rows}
    lines += ["", "Test images: " + ", ".join(f"{d} {v if v is not None else 'all'}" for d, v in n.items())]
    return "\n".join(lines)


def _width_ann(rp: dict, width: int, data, device: str, profile: str):
    """The recipe ablation's ANN of ``width`` on its dataset (cached) and its statistics."""
    from sjunet.models.checkpoint import load_ann
    from sjunet.training import TrainOptions, train

    from .common import RESULTS, cached_stats
    from .tables_common import DATASETS, PROFILES as ANN_PROFILES

    d = DATASETS[rp["dataset"]]
    if width == ANN_PROFILES[rp["ann_profile"]]["width"]:  # the paper tables' ANN of this dataset
        from .tables_common import _prepare

        _, name, d, ann, stats = _prepare(rp["ann_profile"], rp["dataset"], data, device)
        out = RESULTS / rp["ann_profile"] / name / "ftrecipe"
        out.mkdir(parents=True, exist_ok=True)
        return ann, stats, out, d
    out = RESULTS / f"ftrecipe-{profile}" / f"w{width}"
    path = out / "ann.pt"
    minutes = rp["ann_minutes"]
    if not path.exists():
        pa = ANN_PROFILES[rp["ann_profile"]]
        train(TrainOptions(dataset=d["train"], data=data, output=str(path), epochs=pa["epochs"], batch_size=pa["batch"],
                           width=width, depth=pa["depth"], device=device, max_minutes=minutes, optimizer="adam",
                           lr=pa["lr"], dataset_options=d["train_opts"], seed=0), progress=False, force=True)
    ann, _ = load_ann(path)
    return ann, cached_stats(ann, out / "stats.h5", d["train"], data, d["train_opts"], device), out, d


def recipe(profile: str = "cpu", model=None, data=None, device: str = "cpu") -> dict:
    """The fine-tuning recipe ablation (module docstring)."""
    from sjunet.conversion.recipe import convert, load_snn, save_snn
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_snn
    from sjunet.tasks import task_for

    from .common import write_results
    from .common import _previous_rows

    rp = RECIPE_PROFILES[profile]
    previous = _previous_rows("ftrecipe", profile, rp, key="id")
    rows: list[dict] = []
    for arm in rp["arms"]:
        width = arm["width"]
        ann, stats, out, d = _width_ann(rp, width, data, device, profile)
        test = get_dataset(d["test"], data, "test", **d["test_opts"])
        task = task_for(test)
        ev = dict(reference=ann, limit=arm["limit"], multiple=ann.size_multiple, progress=False, device=device)
        T = rp["T"]
        snn = convert(ann, stats)
        path = save_snn(snn, out / f"snn_T{T}.safetensors")
        conv = evaluate_snn(snn, test, [T], task, **ev)
        for loss in arm["losses"]:
            for lr in arm["lrs"]:
                rid = f"w{width}-{loss}-{lr}"
                prev = previous.get(rid)
                if prev is not None and prev["ann_fingerprint"] == stats.model_fingerprint and "metric" in prev:
                    rows.append(prev)
                    continue
                ft_path = out / f"ft_{loss}_{lr}.safetensors"
                ft = _finetune(path, ft_path, d, data, T, device,
                               {"batch": 4, "val_limit": rp["val_limit"], "iters": rp["iters"], "epochs": 1000},
                               lr=lr, loss=loss, lr_trial_iters=rp.get("trial_iters", 20))
                after = evaluate_snn(load_snn(ft_path)[0], test, [T], task, **ev)
                rows.append({"id": rid, "width": width, "loss": loss, "lr_option": lr, "T": T,
                             "ann_fingerprint": stats.model_fingerprint, "metric": task.metric, "ann": conv["ann"],
                             "converted": conv["T"][str(T)], "finetuned": after["T"][str(T)], **ft})
                write_results("ftrecipe", profile, _recipe_table(rows, rp), {"profile": profile, "settings": rp,
                                                                               "rows": rows})
    table = _recipe_table(rows, rp)
    path = write_results("ftrecipe", profile, table, {"profile": profile, "settings": rp, "rows": rows})
    return {"table": table, "rows": rows, "path": str(path)}


def _recipe_table(rows: list[dict], rp: dict) -> str:
    lines = [f"Fine-tuning recipe ablation on {rp['dataset']} at T = {rp['T']} ({rp['iters']} iterations each; "
             "validation = the score the loop keeps (input's → kept); test cells: value (× ANN))", "",
             "| width | objective | lr | chosen lr | val before → after | test converted | test fine-tuned | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        _, _, conv, ft = _cells(r)
        lines.append(f"| {r['width']} | {r['loss']} | {r['lr_option']} | {r['lr']:g} | {r['val_before']:.4f} → "
                     f"{r['val_after']:.4f} | {conv} | {ft} | {r['minutes']:.1f} |")
    return "\n".join(lines)
