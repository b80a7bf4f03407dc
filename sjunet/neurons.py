"""Neurons (paper §3.2, Eq. 4–6; spec §3) behind one small interface, and the static input synapse:
the neuron registry, and the one place to import neurons from.

The parts, each its own module (none imports this one, so nothing imports upward):

* :mod:`sjunet.neuron_base` — **the neuron interface** (:class:`SpikingNeuron`, :func:`is_neuron`,
  :func:`set_recording`), threshold ladders (:func:`threshold_ladder`, :func:`validate_ladder`,
  :func:`is_halving`), the :data:`NeuronFactory` type with :func:`refuse_signed`, and the
  :class:`AdvancedByStep` mixin; it imports no other neuron module;
* :mod:`sjunet.mt_neurons` — the multi-threshold neuron (:func:`mt_step`,
  :class:`MultiThresholdNode`; :func:`IFNode`, the IF neuron, is the same class with one threshold);
* :mod:`sjunet.signed_neurons` — leaky ReLU and PReLU (spec §11): :func:`signed_mt_step` /
  :class:`SignedMultiThresholdNode`;
* :mod:`sjunet.peer_neurons` — the paper's peers, multi-level (ML) and real spike (RS);
* :mod:`sjunet.static_synapse` — :class:`StaticInputSynapse`, the first (analog) synaptic layer.

This module imports them all and holds the registry: :data:`NEURON_TYPES` (the neuron classes an
SNN file may name, by class name) and :data:`FACTORIES` (``--neuron`` name -> default ladder and
factory builder; the CLI reads its choices from it), with :func:`mt_factory`. A new neuron type
subclasses :class:`SpikingNeuron` in its own module and is registered here; the recipe, flow,
energy and plots need no edit. Every name above is re-exported, so ``from sjunet.neurons import …``
works for all of them.
"""
from __future__ import annotations

from typing import Callable, Sequence

from sjunet.mt_neurons import IFNode, MultiThresholdNode, mt_step, mt_step_surrogate
from sjunet.neuron_base import (LADDERS, AdvancedByStep, NeuronFactory, SpikingNeuron, is_halving, is_neuron,
                                named_ladder, refuse_signed, set_recording, threshold_ladder, validate_ladder)
from sjunet.peer_neurons import MultiLevelNode, RealSpikeNode, ml_factory, rs_factory
from sjunet.signed_neurons import (SignedMultiThresholdNode, leaky, signed_mt_step,
                                   signed_mt_step_surrogate)
from sjunet.static_synapse import StaticInputSynapse


def mt_factory(thresholds: Sequence[float] = (2.0, 1.0, 0.5, 0.25), v_init: float = 0.0) -> NeuronFactory:
    """Factory of multi-threshold neurons (``thresholds=(1.0,)``: integrate-and-fire); for a leaky
    ReLU / PReLU node (``negative_slope`` given) the signed neuron on the same ladder and ``v_init``."""
    ladder = validate_ladder(thresholds)

    def factory(relu_name: str, negative_slope=None) -> SpikingNeuron:
        if negative_slope is None:
            return MultiThresholdNode(ladder, v_init=v_init)
        return SignedMultiThresholdNode(ladder, negative_slope, v_init=v_init)

    return factory


#: neuron classes an SNN file may name (rebuilt from their ``spec()``)
NEURON_TYPES: dict[str, type[SpikingNeuron]] = {"MultiThresholdNode": MultiThresholdNode,
                                                "SignedMultiThresholdNode": SignedMultiThresholdNode,
                                                "MultiLevelNode": MultiLevelNode,
                                                "RealSpikeNode": RealSpikeNode}

#: neuron name (``--neuron``) -> (default ladder, factory builder)
FACTORIES: dict[str, tuple[tuple[float, ...], Callable[..., NeuronFactory]]] = {
    "mt": (threshold_ladder(4, 2.0), mt_factory),
    "if": ((1.0,), mt_factory),
    "ml": ((3.0, 2.0, 1.0), ml_factory),
    "rs": ((1.0,), rs_factory),
}

__all__ = ["AdvancedByStep", "FACTORIES", "LADDERS", "named_ladder", "IFNode", "MultiLevelNode", "MultiThresholdNode", "NEURON_TYPES",
           "NeuronFactory", "RealSpikeNode", "SignedMultiThresholdNode", "SpikingNeuron", "StaticInputSynapse",
           "is_halving", "is_neuron", "leaky", "ml_factory", "mt_factory", "mt_step", "mt_step_surrogate",
           "refuse_signed", "rs_factory", "set_recording", "signed_mt_step", "signed_mt_step_surrogate",
           "threshold_ladder", "validate_ladder"]
