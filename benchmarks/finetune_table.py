"""Fine-tuning table: ANN, converted SNN and spiking-flow fine-tuned SNN at several short T.

For each T: convert (connection-wise, MT), evaluate on the test split, fine-tune with spiking
flow on training crops (best epoch chosen on the validation split carved from the training
images), evaluate again on the test split. Agreement is with the ANN's predictions.

    python -m sjunet.benchmarks finetune --profile cpu --model runs/em/ann.pt --data ../shared/data
"""
from __future__ import annotations

import time
from pathlib import Path

PROFILES = {
    "smoke": dict(dataset="demo-seg", T=[2], epochs=1, minutes=None, batch=4, lr=1e-3, limit=2,
                  dataset_options={"size": 32, "num_items": 8}, train_options={}),
    "cpu": dict(dataset="em", T=[10, 5, 3, 2], epochs=15, minutes=3.0, batch=4, lr=1e-4, limit=None,
                dataset_options={}, train_options={"crop": 128, "samples_per_epoch": 80}),
    "paper": dict(dataset="em", T=[10, 5, 3, 2], epochs=40, minutes=None, batch=4, lr=1e-4, limit=None,
                  dataset_options={}, train_options={"crop": 128, "samples_per_epoch": 160}),
}


def run(profile: str = "cpu", model: str | None = None, data: str | None = None, device: str = "cpu") -> dict:
    from sjunet.data import get_dataset
    from sjunet.evaluation import evaluate_snn
    from sjunet.flow import FinetuneOptions, finetune
    from sjunet.recipe import convert, load_snn
    from sjunet.tasks import task_for

    from .common import RESULTS, hard_key, ratio, write_results
    from .conversion import _model, _stats

    p = dict(PROFILES[profile])
    out = RESULTS / f"finetune-{profile}"
    out.mkdir(parents=True, exist_ok=True)
    p.setdefault("train_epochs", 2)
    model, ann, ckpt = _model(p, model, out, data)
    stats, _ = _stats(ann, model, p, data, out, device)
    test = get_dataset(p["dataset"], data, "test", **p["dataset_options"])
    task = task_for(test)
    rows = []
    for T in p["T"]:
        snn_path = out / f"snn_T{T}.safetensors"
        convert(ann, stats, norm="connection", neuron="mt", output=snn_path, sources={"model": model})
        snn, _ = load_snn(snn_path)
        before = evaluate_snn(snn, test, [T], task, reference=ann, limit=p["limit"], multiple=ann.size_multiple,
                              progress=False, device=device)
        t0 = time.perf_counter()
        s = finetune(FinetuneOptions(snn=str(snn_path), dataset=p["dataset"], data=data, output=str(out / f"ft_T{T}.safetensors"),
                                     T=T, epochs=p["epochs"], batch_size=p["batch"], lr=p["lr"], device=device,
                                     max_minutes=p["minutes"], dataset_options={**p["dataset_options"], **p["train_options"]}),
                     progress=False, force=True)
        minutes = (time.perf_counter() - t0) / 60
        ft, _ = load_snn(out / f"ft_T{T}.safetensors")
        after = evaluate_snn(ft, test, [T], task, reference=ann, limit=p["limit"], multiple=ann.size_multiple,
                             progress=False, device=device)
        rows.append({"T": T, "ann": before["ann"], "converted": before["T"][str(T)], "finetuned": after["T"][str(T)],
                     "minutes": minutes, "steps": s.get("step"), "best": s.get("best"), "improved": s.get("improved")})
    keys = [k for k in rows[0]["ann"] if k.startswith("f1_")] or ["psnr", "ssim"]
    agree = "agreement" if task.kind == "segmentation" else "psnr_vs_reference"
    rk = hard_key(rows[0]["ann"], keys)
    lines = [f"Spiking-flow fine-tuning on {p['dataset']} ({profile} profile, device {device}; lr {p['lr']} cosine, "
             f"batch {p['batch']}, {p['train_options']})", "",
             "| T | model | " + " | ".join(keys) + f" | {agree} | {rk} SNN/ANN | fine-tune min |",
             "|---|---|" + "---|" * (len(keys) + 3)]
    for r in rows:
        for name in ("ann", "converted", "finetuned"):
            m = r[name]
            lines.append(f"| {r['T']} | {name} | " + " | ".join(f"{m[k]:.4f}" for k in keys) +
                         f" | {m.get(agree, float('nan')):.4f} | {ratio(m[rk], r['ann'][rk]):.3f} | "
                         + (f"{r['minutes']:.1f} |" if name == "finetuned" else " |"))
    table = "\n".join(lines)
    path = write_results("finetune", profile, table, {"profile": profile, "settings": p, "model": model,
                                                      "model_fingerprint": ckpt.get("fingerprint"), "rows": rows})
    return {"table": table, "rows": rows, "path": str(path)}
