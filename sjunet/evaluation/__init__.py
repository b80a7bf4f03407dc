"""Evaluation (``sjunet evaluate``, ``sjunet energy``): metrics of an ANN and/or a converted SNN on a
test split, and energy counting.

The parts, lowest first:

* :mod:`.protocol` — the evaluation protocols (:class:`Protocol`: ``whole``, ``tiled``, ``patch``) and
  their checks;
* :mod:`.layout` — how an image goes through the network under a protocol: padding to the size
  multiple, the memory budget, tiles (:func:`plan`, :func:`run_layout`, :func:`predict`);
* :mod:`.loops` — :func:`evaluate_model`, :func:`evaluate_snn`, :func:`evaluate` (metrics at every T,
  agreement with the ANN, timings), also used for validation by ``train`` and ``finetune``;
* :mod:`.fanout` — the structural fan-out of every spike source (exact SOPs); :mod:`.fanout_generic`
  — per element where a path leaves the spatial layout (tokens, Linear), and the layers fed by
  graded currents;
* :mod:`.energy` — spikes, events, SOPs and MACs, energy in the paper's, the SOP and NeuroBench
  conventions, the metric–energy frontier (:func:`count_energy`, :func:`energy_frontier`);
* :mod:`.report` — energy reports as Markdown;
* :mod:`.degenerate` — a broken ANN (one class everywhere, a constant image): detected on data,
  recorded in what it makes, and repeated by every command (:func:`~.degenerate.check_model`).

Where to change what: a new protocol in :mod:`.protocol` (with its layout in :mod:`.layout`); a new
energy convention in :data:`sjunet.evaluation.energy.CONVENTIONS`; a new stage's fan-out in
:mod:`.fanout`; metrics of a task in :mod:`sjunet.metrics` / :mod:`sjunet.tasks`. Tests:
``tests/evaluation/``. Every name below is importable from ``sjunet.evaluation``.
"""
from sjunet.evaluation.energy import count_energy, count_energy_on, energy_frontier
from sjunet.evaluation.layout import (DEFAULT_TILE, MAX_ELEMENTS, TILE_OVERLAP, Layout, Outputs, activation_cost,
                                      budget, pad_to_multiple, plan, predict, protocol_record, run_layout)
from sjunet.evaluation.loops import (ann_fn, check_compatible, check_options, evaluate, evaluate_model, evaluate_snn,
                                     snn_fn)
from sjunet.evaluation.protocol import PAD_MODES, PATCH_BATCH, PROTOCOLS, Protocol, check_protocol, make_protocol

__all__ = ["DEFAULT_TILE", "Layout", "MAX_ELEMENTS", "Outputs", "PAD_MODES", "PATCH_BATCH", "PROTOCOLS", "Protocol",
           "TILE_OVERLAP", "activation_cost", "ann_fn", "budget", "check_compatible", "check_options",
           "check_protocol", "count_energy", "count_energy_on", "energy_frontier", "evaluate", "evaluate_model",
           "evaluate_snn", "make_protocol", "pad_to_multiple", "plan", "predict", "protocol_record", "run_layout",
           "snn_fn"]
