"""Direct training of a Spiking-UNet from scratch (the paper's "DT" columns, Tables 1–2):
``sjunet train --spiking --neuron mt|ml|rs|lif --T N``.

The paper trains its DT baselines with a surrogate gradient through time ("100 epochs, lr 1e-3,
Adam", §4.2–4.3) and says nothing more. What sjunet does, reusing the conversion and the
fine-tuning loop rather than a second trainer:

1. **Architecture**: the ANN the same options would train (sjunet's U-Net of ``width``/``depth``/
   ``pool``, or any ``--arch``, e.g. :func:`sjunet.models.fcn.SpikingFCNNet` for Spiking-FCN),
   randomly initialised with ``seed``.
2. **Initialisation** (the paper is silent; a known failure of deep directly-trained SNNs is a
   network that does not fire at initialisation): the untrained ANN is calibrated on
   ``calib_batches`` training batches and converted (connection-wise), so every layer starts in
   its neurons' working range. The neurons are the **training-time** ones of each reference
   (:data:`DT_NEURONS`): MT (the paper's ladder, IF, reset by subtraction), ML (the reference
   MLF unit: three LIF levels 0.6/1.6/2.6, τ = 0.25, hard reset), RS (the Real Spike LIF: fires at
   0.5, τ = 0.25, hard reset, learnable channel-wise amplitudes), LIF (one threshold, τ = 0.5,
   hard reset — the Spiking-FCN neuron of Kim et al. 2022; their leak is a learned/chosen
   hyper-parameter, 0.5 here).
3. **Training**: :func:`sjunet.training.finetuning.finetune` with ``method="bptt"`` — T multi-step steps with
   SpikingJelly's surrogate gradients, the same loop (validation split, best-on-validation,
   exact resume, budgets, non-finite checks) and the same losses (Eq. 11/12 on the accumulated
   output) as fine-tuning; Adam 1e-3 by default as the paper.

The initial SNN goes to the fine-tuning as an object (recorded by its content fingerprint,
:meth:`sjunet.snn.model.SpikingUNet.fingerprint`); it is also written next to the output
(``<output stem>.init.safetensors``) for the user. A resumed run builds it again (the same seed,
the same network: a different one is refused by the resume's identity check).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from sjunet.neurons import MultiThresholdNode, NeuronFactory, threshold_ladder
from sjunet.neurons.peers import ML_REFERENCE, RS_REFERENCE, MultiLevelNode, RealSpikeNode
from sjunet.snn import SpikingUNet

#: LIF of the Spiking-FCN baseline (decay τ = 0.5 per step, hard reset, unit spikes)
LIF_DT = {"thresholds": (1.0,), "decay": 0.5, "reset": "zero", "amplitude": 1.0}

#: training-time neuron of each reference (``--neuron`` of ``sjunet train --spiking``)
DT_NEURONS: dict[str, Callable[[], NeuronFactory]] = {
    "mt": lambda: (lambda name: MultiThresholdNode(threshold_ladder(4, 2.0))),
    "ml": lambda: (lambda name: MultiLevelNode(**ML_REFERENCE)),
    "rs": lambda: (lambda name: RealSpikeNode(**RS_REFERENCE)),
    "lif": lambda: (lambda name: MultiLevelNode(**LIF_DT)),
}


@dataclass
class DirectOptions:
    dataset: str
    data: str | None = None
    output: str = "runs/snn_dt.safetensors"
    neuron: str = "mt"
    T: int = 4
    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-3
    optimizer: str = "adam"
    width: int = 16
    depth: int = 4
    pool: str = "avg"
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    calib_batches: int = 4
    seed: int = 0
    device: str = "cpu"
    max_minutes: float | None = None
    max_iters: int | None = None
    val_every: int | None = None
    val_limit: int | None = None
    grad_clip: float | None = 1.0
    dataset_options: dict = field(default_factory=dict)
    #: segmentation loss weights: "auto", "none" or "w1,w2" (:func:`sjunet.tasks.resolve_class_weights`)
    class_weights: str = "auto"


def init_path(output: str | Path) -> Path:
    """Where the initial (untrained, converted) SNN of a direct-training run is kept."""
    p = Path(output)
    return p.with_name(p.name.split(".")[0] + ".init.safetensors")


def initial_snn(opts: DirectOptions):
    """The untrained Spiking-UNet of ``opts``: the randomly initialised ANN, calibrated on a few
    training batches and converted with the training-time neuron of ``opts.neuron``."""
    from torch.utils.data import DataLoader

    from sjunet.calibration import calibrate
    from sjunet.conversion.recipe import convert
    from sjunet.rng import seed_everything
    from sjunet.tasks import task_for, task_to_dict
    from sjunet.training.ann import build_network
    from sjunet.training.run import train_val_datasets

    if opts.neuron not in DT_NEURONS:
        raise ValueError(f"unknown --neuron {opts.neuron!r} for direct training; choose one of {', '.join(DT_NEURONS)}")
    seed_everything(opts.seed)
    train_ds, _ = train_val_datasets(opts.dataset, opts.data, opts.seed, opts.dataset_options)
    task = task_for(train_ds)
    model, config, arch = build_network(train_ds, task, opts.width, opts.depth, pool=opts.pool, arch=opts.arch,
                                        arch_kwargs=opts.arch_kwargs)
    info = {"arch": arch} if arch is not None else {"sjunet_config": config.to_dict()}
    model.eval()
    loader = DataLoader(train_ds, batch_size=opts.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(opts.seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an untrained layer may be dead on a few batches: the fallback is fine
        stats = calibrate(model, loader, max_batches=opts.calib_batches, progress=False)
    snn = convert(model, stats, neuron=opts.neuron if opts.neuron in ("mt", "ml", "rs") else "if",
                  neuron_factory=DT_NEURONS[opts.neuron](), v_init=0.0, model_info=info)
    snn.record.task = task_to_dict(task)
    snn.record.conversion.options["direct_training"] = {"neuron": opts.neuron, "from": "random initialisation",
                                                        "calibration_batches": opts.calib_batches}
    return snn


def train_spiking(opts: DirectOptions, resume: bool = False, progress: bool = True,
                  force: bool = False) -> tuple[SpikingUNet, dict]:
    """Direct training (module docstring); returns ``(the trained SpikingUNet, summary)``:
    :func:`sjunet.training.finetuning.finetune`'s, the summary with ``init`` (where the initial SNN was written)."""
    from sjunet.conversion.recipe import save_snn
    from sjunet.io import OutputExistsError, check_writable
    from sjunet.training.finetuning import FinetuneOptions, finetune

    start = init_path(opts.output)
    check_writable(opts.output)
    if start.exists() and not (resume or force):
        raise OutputExistsError(f"{start} exists (the initial SNN of an earlier run); --resume it or --force")
    initial = initial_snn(opts)
    if not (resume and start.exists()):
        save_snn(initial, start, sources={"direct_training": asdict(opts)})
    initial = initial.rebuilt()  # as the file holds it (its modules in a loaded file's order, as fine-tuning always had)
    initial.source = {"path": str(start)}  # where it was written, for the record (its fingerprint: its content)
    ft = FinetuneOptions(dataset=opts.dataset, data=opts.data, output=opts.output, T=opts.T,
                         epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr, optimizer=opts.optimizer,
                         schedule="cosine", method="bptt", seed=opts.seed, max_minutes=opts.max_minutes,
                         max_iters=opts.max_iters, val_every=opts.val_every, val_limit=opts.val_limit,
                         device=opts.device, dataset_options=dict(opts.dataset_options), grad_clip=opts.grad_clip,
                         class_weights=opts.class_weights)
    snn, summary = finetune(initial, ft, resume=resume, progress=progress, force=force)
    return snn, {**summary, "init": str(start)}
