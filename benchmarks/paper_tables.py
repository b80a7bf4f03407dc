"""The paper's tables on the real datasets (issue: paper-table benchmarks).

* ``tables12`` — Tables 1/2: per dataset, the ANN, the converted SNN (connection-wise, MT) at the
  paper's T and at half of it, the spiking-flow fine-tuned SNN at half T, and the peer — the same
  ANN converted by SpikingJelly's stock ``RateCodingRecipe`` (IF, 99.9 %) — at the same T; then the
  paper's own comparison systems (``peers``: Spiking-FCN, ML/RS/MT × DT/FT) beside its figures.
* ``ladders`` — Table 4: threshold ladders (IF with θ = 2, 1, 0.5; MT with 2–5 thresholds).
* (Table 5, energy, is the frontier benchmark ``energy``: :mod:`sjunet.benchmarks.energy_frontier`.)

ANNs are trained once per (profile, dataset) under ``benchmarks/results/<profile>/<dataset>/``
and reused (delete the folder to retrain); the ``cpu`` profile uses small widths and minute
budgets, ``paper`` the paper's width 64 and long schedules (for a GPU: ``--device cuda``).

    python -m sjunet.benchmarks tables12 --profile cpu --data ../shared/data
"""
from __future__ import annotations

import time
from pathlib import Path

from .common import _previous_rows
from .tables_common import (DATASETS, PAPER_LADDER, PROFILES, _ann, _eval_options, _metric_keys, _prepare, _stats,
                            paper_ladder)


def _finetune(p: dict, d: dict, data, device: str, snn_path: Path, output: Path, T: int) -> float:
    """Spiking-flow fine-tuning of ``snn_path`` at ``T`` with the profile's budget; minutes taken."""
    from sjunet.conversion.recipe import load_snn
    from sjunet.training.finetuning import FinetuneOptions, finetune

    t0 = time.perf_counter()
    finetune(load_snn(snn_path)[0], FinetuneOptions(dataset=d["train"], data=data, output=str(output), T=T,
                             epochs=p["ft_epochs"], batch_size=4, max_minutes=p["ft_minutes"], device=device,
                             val_limit=p["limit"], dataset_options=d["train_opts"]), progress=False, force=True)
    return (time.perf_counter() - t0) / 60


def _fingerprints(ann, stats, **files) -> dict:
    """What a row was made from: the ANN's and the statistics' model fingerprints, and the
    fingerprint of every SNN file given (name -> path)."""
    from sjunet.io import file_fingerprint, model_fingerprint

    return {"ann": model_fingerprint(ann), "stats_model": stats.model_fingerprint,
            **{k: file_fingerprint(v) for k, v in files.items()}}


def _tables12_lines(row: dict) -> list[str]:
    """Markdown rows of one dataset's Tables 1/2 entry (one per reported metric)."""
    from .common import ratio

    a, T, T2, name = row["ann"], row["T"], row["T_half"], row["dataset"]
    out = []
    for k in _metric_keys(a):
        c, c2, f2 = row["converted"][str(T)][k], row["converted"][str(T2)][k], row["finetuned"][str(T2)][k]
        if row["stock"] is None:  # the stock converter refused this model
            s1 = s2 = "refused¹"
        else:
            s1, s2 = (f"{row['stock'][str(t)][k]:.4f}" for t in (T, T2))
        out.append(f"| {name} | {k} | {a[k]:.4f} | {c:.4f} (T={T}) | {c2:.4f} (T={T2}) | {f2:.4f} | {s1} | {s2} | "
                   f"{ratio(c, a[k]):.3f} | {ratio(c2, a[k]):.3f} | {ratio(f2, a[k]):.3f} |")
    return out


def tables12(profile: str = "cpu", model=None, data=None, device: str = "cpu", dataset: str | None = None,
             peers: bool = True) -> dict:
    """Tables 1/2 over the profile's datasets: ours (ANN, converted, fine-tuned, the stock converter)
    and, with ``peers``, the paper's comparison systems (:mod:`sjunet.benchmarks.peer_table`: Spiking-FCN,
    ML/RS/MT × DT/FT, with the paper's figures beside them) appended.

    Resumable: a dataset whose row from an earlier run of the same settings was made from the same
    ANN (fingerprint) is not run again; name it in ``dataset`` to force a rerun.
    """
    from torch.utils.data import DataLoader

    from sjunet.conversion.recipe import convert, convert_stock, load_snn
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_snn
    from sjunet.io import model_fingerprint
    from sjunet.tasks import task_for

    from .common import RESULTS, write_results

    p = PROFILES[profile]
    forced = [n.strip() for n in dataset.split(",")] if dataset else []
    unknown = [n for n in forced if n not in p["datasets"]]
    if unknown:
        raise ValueError(f"dataset(s) {unknown} are not in the {profile} profile; choose from {p['datasets']}")
    previous = _previous_rows("tables12", profile, p)
    rows: list[dict] = []
    header = [f"Tables 1/2 ({profile} profile: width {p['width']}, ANN budget {p['train_minutes']} min, fine-tuning "
              f"{p['ft_minutes']} min at T/2; device {device}; ratios = SNN/ANN)", "",
              "| dataset | metric | ANN | SNN T | SNN T/2 | FT SNN T/2 | stock T | stock T/2 | SNN/ANN T | SNN/ANN T/2 "
              "| FT/ANN T/2 |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def table() -> str:
        lines = header + [line for r in rows for line in _tables12_lines(r)]
        refusals = [f"{r['dataset']}: {r['stock_error']}" for r in rows if r.get("stock_error")]
        if refusals:
            lines += ["", "¹ SpikingJelly's `RateCodingRecipe` refused the model — " + "; ".join(refusals)]
        return "\n".join(lines)

    for name in p["datasets"]:
        d = DATASETS[name]
        t0 = time.perf_counter()
        ann_path, ann = _ann(p, name, data, device, profile)
        old = previous.get(name)
        if name not in forced and old and old.get("fingerprints", {}).get("ann") == model_fingerprint(ann):
            rows.append(old)
            continue
        stats = _stats(ann, name, data, device, profile)
        test = get_dataset(d["test"], data, "test", **d["test_opts"])
        task = task_for(test)
        T, T2 = d["T"], max(1, d["T"] // 2)
        snn_path = RESULTS / profile / name / "snn.safetensors"
        convert(ann, stats, thresholds=PAPER_LADDER, output=snn_path, sources={"model": ann_path})
        snn, _ = load_snn(snn_path)
        ev = _eval_options(p, ann, device)
        conv = evaluate_snn(snn, test, [T2, T], task, **ev)
        train_ds = get_dataset(d["train"], data, "train", **d["train_opts"])
        stock, stock_error = None, None
        try:
            peer = convert_stock(ann, DataLoader(train_ds, batch_size=4))
        except ValueError as e:  # e.g. a layer whose 99.9th percentile is 0: the stock recipe has no threshold
            stock_error = str(e).splitlines()[0]
        else:
            stock = evaluate_snn(peer, test, [T2, T], task, **ev)["T"]
        ft_path = RESULTS / profile / name / f"snn_ft_T{T2}.safetensors"
        _finetune(p, d, data, device, snn_path, ft_path, T2)
        ft = evaluate_snn(load_snn(ft_path)[0], test, [T2], task, **ev)
        rows.append({"dataset": name, "T": T, "T_half": T2, "ann": conv["ann"], "converted": conv["T"], "stock": stock,
                     "stock_error": stock_error, "finetuned": ft["T"], "test": test.describe(),
                     "seconds": time.perf_counter() - t0,
                     "fingerprints": _fingerprints(ann, stats, snn=snn_path, finetuned=ft_path)})
        write_results("tables12", profile, table(), {"profile": profile, "settings": p, "rows": rows})
    text = table()
    payload = {"profile": profile, "settings": p, "rows": rows}
    path = write_results("tables12", profile, text, payload)
    from . import peer_table

    if peers and profile in peer_table.PROFILES:  # the paper's comparison systems (resumable, cached rows)
        pr = peer_table.run(profile, data=data, device=device)
        text += "\n\n" + pr["table"]
        path = write_results("tables12", profile, text, {**payload, "peers": {"path": pr["path"],
                                                                              "figures": pr["figures"]}})
    return {"table": text, "rows": rows, "path": str(path)}


LADDERS = [("IF θ=2", (2.0,)), ("IF θ=1", (1.0,)), ("IF θ=0.5", (0.5,)), ("MT 2,1", (2.0, 1.0)),
           ("MT 1,0.5", (1.0, 0.5)), ("MT 2,1,0.5", (2.0, 1.0, 0.5)), ("MT 2,1,0.5,0.25", (2.0, 1.0, 0.5, 0.25)),
           ("MT 2,1,0.5,0.25,0.125", (2.0, 1.0, 0.5, 0.25, 0.125))]


def ladders(profile: str = "cpu", model=None, data=None, device: str = "cpu", dataset: str | None = None) -> dict:
    """Table 4: threshold ladders, connection-wise, on one dataset (default: the profile's first)."""
    from sjunet.conversion.recipe import convert
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_snn
    from sjunet.tasks import task_for

    from .common import ratio, write_metric_figure, write_results

    p, name, d, ann, stats = _prepare(profile, dataset, data, device)
    test = get_dataset(d["test"], data, "test", **d["test_opts"])
    task = task_for(test)
    Ts = sorted({max(1, d["T"] // 5), max(1, d["T"] // 2), d["T"]})
    res = {}
    for label, ladder in LADDERS:
        neuron = "if" if len(ladder) == 1 else "mt"
        snn = convert(ann, stats, neuron=neuron, thresholds=ladder)
        res[label] = evaluate_snn(snn, test, Ts, task, **_eval_options(p, ann, device))
    a = next(iter(res.values()))["ann"]
    k = _metric_keys(a)[0]
    lines = [f"Table 4: threshold ladders on {name} ({profile} profile; connection-wise, v0 = θ_min/2; {k})", "",
             "| ladder | " + " | ".join(f"T={t}" for t in Ts) + " | agreement at T=" + str(Ts[-1]) + " |",
             "|---|" + "---|" * (len(Ts) + 1),
             "| ANN | " + " | ".join(f"{a[k]:.4f}" for _ in Ts) + " | — |"]
    for label, r in res.items():
        agree = r["T"][str(Ts[-1])].get("agreement", r["T"][str(Ts[-1])].get("psnr_vs_reference", float("nan")))
        lines.append(f"| {label} | " + " | ".join(f"{r['T'][str(t)][k]:.4f} ({ratio(r['T'][str(t)][k], a[k]):.3f})"
                                                    for t in Ts) + f" | {agree:.4f} |")
    table = "\n".join(lines)
    write_metric_figure("ladders", profile, res, k, f"Threshold ladders on {name}: {k} vs T (dashed: ANN)")
    path = write_results("ladders", profile, table, {"profile": profile, "dataset": name, "T": Ts,
                                                     "fingerprints": _fingerprints(ann, stats), "test": test.describe(),
                                                     "results": {l: r["T"] for l, r in res.items()}, "ann": a})
    return {"table": table, "path": str(path)}


#: Table 3 variants: (normalisation, neuron)
ABLATION = [("layer", "if"), ("layer", "mt"), ("connection", "if"), ("connection", "mt")]
#: long T of Table 3's rows without fine-tuning (the paper: 1000)
LONG_T = {"smoke": 16, "cpu": 200, "gpu": 1000, "paper": 1000}


def ablation(profile: str = "cpu", model=None, data=None, device: str = "cpu", dataset: str | None = None) -> dict:
    """Table 3: layer-/connection-wise × IF/MT, each converted (at the dataset's T and at a long T)
    and spiking-flow fine-tuned at T — on CamSeq01 as in the paper (``--dataset`` to change)."""
    from sjunet.conversion.recipe import convert, load_snn
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_snn
    from sjunet.tasks import task_for

    from .common import RESULTS, ratio, write_results

    if dataset is None and profile != "smoke":
        dataset = "camseq"
    p, name, d, ann, stats = _prepare(profile, dataset, data, device)
    test = get_dataset(d["test"], data, "test", **d["test_opts"])
    task = task_for(test)
    T, long_T = d["T"], max(d["T"], LONG_T[profile])
    ev = _eval_options(p, ann, device)
    out = RESULTS / profile / name
    res: dict[str, dict] = {}
    for norm, neuron in ABLATION:
        label = f"{norm}-wise {neuron.upper()}"
        snn_path = out / f"snn_{norm}_{neuron}.safetensors"
        convert(ann, stats, norm=norm, neuron=neuron, thresholds=paper_ladder(neuron), output=snn_path,
                sources={"model": str(out / "ann.pt")})
        conv = evaluate_snn(load_snn(snn_path)[0], test, [T, long_T], task, **ev)
        ft_path = out / f"snn_{norm}_{neuron}_ft_T{T}.safetensors"
        ft_min = _finetune(p, d, data, device, snn_path, ft_path, T)
        ft = evaluate_snn(load_snn(ft_path)[0], test, [T], task, **ev)
        res[label] = {"norm": norm, "neuron": neuron, "converted": conv["T"], "finetuned": ft["T"],
                      "finetune_minutes": ft_min, "fingerprints": _fingerprints(ann, stats, snn=snn_path,
                                                                                 finetuned=ft_path)}
    a = conv["ann"]
    k = _metric_keys(a)[0]
    agree = "agreement" if task.kind == "segmentation" else "psnr_vs_reference"
    lines = [f"Table 3: ablation on {name} ({profile} profile; v0 = θ_min/2; fine-tuning ≤ {p['ft_minutes']} min "
             f"at T = {T}; {k}, ANN {a[k]:.4f})", "",
             f"| LW | CW | MT | FT | T | {k} | SNN/ANN | {agree} |", "|---|---|---|---|---|---|---|---|"]
    for label, r in res.items():
        lw, cw = ("✓", "") if r["norm"] == "layer" else ("", "✓")
        mt = "✓" if r["neuron"] == "mt" else ""
        for ft_mark, t, m in [("", long_T, r["converted"][str(long_T)]), ("", T, r["converted"][str(T)]),
                              ("✓", T, r["finetuned"][str(T)])]:
            lines.append(f"| {lw} | {cw} | {mt} | {ft_mark} | {t} | {m[k]:.4f} | {ratio(m[k], a[k]):.3f} | "
                         f"{m.get(agree, float('nan')):.4f} |")
    table = "\n".join(lines)
    path = write_results("ablation", profile, table, {"profile": profile, "dataset": name, "T": T, "long_T": long_T,
                                                      "ann": a, "results": res, "test": test.describe(),
                                                      "settings": p})
    return {"table": table, "path": str(path)}
