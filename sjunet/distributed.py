"""Scale-out with PyTorch's own engine (spec §13): ``torchrun`` + ``DistributedDataParallel``.

``torchrun --nproc-per-node N --no-python sjunet train|finetune|evaluate …`` starts N processes;
:func:`init` joins them into a process group (gloo on CPU, NCCL on GPUs, one GPU per local rank).
The semantics are those of one process on the whole global batch:

* every rank draws the same epoch order and takes its share of each global batch of
  ``--batch-size`` items (:func:`shard`): ranks see disjoint items, together the whole batch;
* DDP averages the gradients; each rank's loss is weighted by its share of the global batch
  (:func:`batch_weight`), so uneven last batches still give the gradient of the global mean;
* validation and evaluation split the images across ranks and merge the metric accumulators
  (:func:`merge_meter`): every rank gets the same score, so every rank takes the same decisions
  (best checkpoint, stop); the time budget is rank 0's clock (:func:`decide`);
* only rank 0 writes files; the world size goes into every artifact's provenance.

BatchNorm statistics are per rank (as with DDP everywhere); sjunet's U-Net has no BatchNorm by
default, so its multi-process runs match a single-process run on the concatenated batch.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place in the process group (rank 0 of 1 outside ``torchrun``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def init(device: str = "cpu") -> World:
    """Join the process group ``torchrun`` described in the environment (no-op without one)."""
    import torch.distributed as dist

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available():
        return World()
    if not dist.is_initialized():
        backend = "nccl" if resolve_device(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(_leave)  # an explicit, orderly shutdown, not the process group's destructor at exit
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return world()


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(device: str | torch.device | None) -> str:
    """``"auto"`` (or ``None``) is ``"cuda"`` when a GPU is available, else ``"cpu"``; other values pass."""
    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def device_for(device: str) -> str:
    """A rank's device (``auto`` resolved): ``cuda`` becomes ``cuda:<local rank>`` under torchrun."""
    device = resolve_device(device)
    w = world()
    if w.active and device == "cuda":
        return f"cuda:{w.local_rank}"
    return device


def shard(indices: Sequence[int], w: World | None = None) -> list[int]:
    """This rank's share of ``indices`` (every ``size``-th item from ``rank``)."""
    w = w or world()
    return list(indices)[w.rank::w.size]


def batch_weight(local: int, total: int, w: World | None = None) -> float:
    """Factor on a rank's mean loss so that DDP's average of the gradients is the gradient of the
    mean over the global batch: local · size / total."""
    w = w or world()
    return local * w.size / total if w.active else 1.0


def all_sum(value: float | torch.Tensor) -> float | torch.Tensor:
    """Sum over ranks (identity outside torchrun)."""
    import torch.distributed as dist

    if not world().active:
        return value
    t = value.detach().clone().double() if isinstance(value, torch.Tensor) else torch.tensor(float(value),
                                                                                             dtype=torch.float64)
    dist.all_reduce(t)
    return t if isinstance(value, torch.Tensor) else float(t)


def decide(flag: Any) -> Any:
    """Rank 0's value of ``flag`` on every rank (a stop decision, a score)."""
    import torch.distributed as dist

    if not world().active:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def merge_meter(meter) -> None:
    """Merge a :class:`~sjunet.metrics.MetricAccumulator` across ranks in place (sums of the
    confusion matrix and counts, per-image denoising metrics gathered)."""
    import torch.distributed as dist

    if not world().active:
        return
    dist.all_reduce(meter.cm)
    counts = torch.tensor([meter.agree, meter.compared, meter.num_images], dtype=torch.int64)
    dist.all_reduce(counts)
    meter.agree, meter.compared, meter.num_images = (int(v) for v in counts)
    gathered: list = [None] * world().size
    dist.all_gather_object(gathered, meter.per_image)
    meter.per_image = [m for part in gathered for m in part]


def barrier() -> None:
    import torch.distributed as dist

    if world().active:
        dist.barrier()
