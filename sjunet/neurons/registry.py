"""The neuron registry: :data:`NEURON_TYPES` (the neuron classes an SNN file may name, by class name)
and :data:`FACTORIES` (``--neuron`` name -> default ladder and factory builder; the CLI reads its
choices from it), with :func:`mt_factory`.

A new neuron type subclasses :class:`~sjunet.neurons.base.SpikingNeuron` in its own module of
:mod:`sjunet.neurons` and is registered here (its class in :data:`NEURON_TYPES`, its factory in
:data:`FACTORIES`); the recipe, flow, energy and plots need no edit.
"""
from __future__ import annotations

from typing import Callable, Sequence

from sjunet.neurons.base import AUTO, NeuronFactory, SpikingNeuron, validate_ladder
from sjunet.neurons.mt import MultiThresholdNode
from sjunet.neurons.peers import MultiLevelNode, RealSpikeNode, ml_factory, rs_factory
from sjunet.neurons.sigma_delta import SigmaDeltaNode, SigmaDeltaProduct
from sjunet.neurons.signed import SignedMultiThresholdNode


def mt_factory(thresholds: Sequence[float] = (2.0, 1.0, 0.5, 0.25), v_init: float = 0.0) -> NeuronFactory:
    """Factory of multi-threshold neurons (``thresholds=(1.0,)``: integrate-and-fire); for a leaky
    ReLU / PReLU node (``negative_slope`` given) the signed neuron on the same ladder and ``v_init``."""
    ladder = validate_ladder(thresholds)

    def factory(relu_name: str, negative_slope=None) -> SpikingNeuron:
        if negative_slope is None:
            return MultiThresholdNode(ladder, v_init=v_init)
        return SignedMultiThresholdNode(ladder, negative_slope, v_init=v_init)

    return factory


def per_layer_factory(ladders: dict[str, tuple[tuple[float, ...], float]]) -> NeuronFactory:
    """Factory of multi-threshold neurons with a ladder and initial potential per ReLU node
    (``{relu_name: (ladder, v_init)}``, :mod:`sjunet.conversion.ladders`); signed for a leaky ReLU / PReLU."""
    table = {name: (validate_ladder(ladder), float(v0)) for name, (ladder, v0) in ladders.items()}

    def factory(relu_name: str, negative_slope=None) -> SpikingNeuron:
        if relu_name not in table:
            raise KeyError(f"no ladder was chosen for neuron {relu_name!r}")
        ladder, v0 = table[relu_name]
        if negative_slope is None:
            return MultiThresholdNode(ladder, v_init=v0)
        return SignedMultiThresholdNode(ladder, negative_slope, v_init=v0)

    factory.__name__ = "per_layer_factory"
    return factory


#: neuron classes an SNN file may name (rebuilt from their ``spec()``)
NEURON_TYPES: dict[str, type[SpikingNeuron]] = {"MultiThresholdNode": MultiThresholdNode,
                                                "SignedMultiThresholdNode": SignedMultiThresholdNode,
                                                "MultiLevelNode": MultiLevelNode,
                                                "RealSpikeNode": RealSpikeNode,
                                                "SigmaDeltaNode": SigmaDeltaNode,
                                                "SigmaDeltaProduct": SigmaDeltaProduct}

#: neuron name (``--neuron``) -> (default ladder, factory builder); MT's default is a ladder per layer
#: (:data:`~sjunet.neurons.base.AUTO`, :mod:`sjunet.conversion.ladders`; measured best:
#: ``python -m sjunet.benchmarks ladderstudy``)
FACTORIES: dict[str, tuple[tuple[float, ...] | str, Callable[..., NeuronFactory]]] = {
    "mt": (AUTO, mt_factory),
    "if": ((1.0,), mt_factory),
    "ml": ((3.0, 2.0, 1.0), ml_factory),
    "rs": ((1.0,), rs_factory),
}
