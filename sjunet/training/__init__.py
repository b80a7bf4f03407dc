"""Training (spec §2, §7, §13): the one training loop and its three uses.

The parts, lowest first:

* :mod:`.resume` — the ``<output>.last.pt`` resume state, checked field by field;
* :mod:`.loop` — :func:`fit`, the one training loop (order and randomness, exact resume, best on
  validation, budgets, non-finite numbers stop the run);
* :mod:`.run` — what a run needs around the loop (guarded outputs, train/val splits, optimiser,
  schedule);
* :mod:`.ann` — ``sjunet train``: the ANN U-Net (:func:`train`);
* :mod:`.distill` — distillation from the ANN rebuilt from the SNN;
* :mod:`.flow` — spiking flow (paper §3.4, Algorithm 1): the differentiable pass on accumulated
  quantities, the losses (Eq. 11/12), the spike budget;
* :mod:`.lr_trials` — ``--lr auto``: a short trial of a few rates, on the clock (validations
  counted, a subset when needed, a trial that beats the input kept);
* :mod:`.finetuning` — ``sjunet finetune`` (:func:`finetune`): the flow in the loop, lr trials, the
  input as the bar;
* :mod:`.direct` — ``sjunet train --spiking``: direct training of Spiking-UNets (the paper's DT).

A new training objective is a term of :class:`~sjunet.training.flow.LossWeights` in :mod:`.flow`; a new
optimiser or schedule is in :mod:`.run`. Tests: ``tests/training/``.
"""
from sjunet.training.ann import TrainOptions, build_network, check_volume_fits, train
from sjunet.training.direct import DirectOptions, train_spiking
from sjunet.training.finetuning import FinetuneOptions, finetune
from sjunet.training.loop import LoopOptions, fit

__all__ = ["DirectOptions", "FinetuneOptions", "LoopOptions", "TrainOptions", "build_network", "check_volume_fits",
           "finetune", "fit", "train", "train_spiking"]
