"""Neurons (paper §3.2, Eq. 4–6; spec §3) behind one small interface: the one place to import neurons from.

The parts, lowest first (none imports this package's ``__init__``, so nothing imports upward):

* :mod:`.base` — **the neuron interface** (:class:`SpikingNeuron`, :func:`is_neuron`,
  :func:`set_recording`; the in-place step every neuron type implements, :meth:`SpikingNeuron.step_into`,
  with its optional compiled kernels, :func:`set_compiled`), threshold ladders (:func:`threshold_ladder`, :func:`validate_ladder`,
  :func:`is_halving`, :data:`LADDERS`), the :data:`NeuronFactory` type with :func:`refuse_signed`, and
  the :class:`AdvancedByStep` mixin; it imports no other neuron module;
* :mod:`.mt` — the multi-threshold neuron (:func:`mt_step`, :class:`MultiThresholdNode`;
  :func:`IFNode`, the IF neuron, is the same class with one threshold);
* :mod:`.signed` — leaky ReLU and PReLU (spec §11): :func:`signed_mt_step` /
  :class:`SignedMultiThresholdNode`;
* :mod:`.peers` — the paper's peers, multi-level (ML) and real spike (RS);
* :mod:`.sigma_delta_functions` — the Σ-Δ table (spec §15): every function a Σ-Δ neuron can stand for,
  one line each, the products, and their ANN forms (:class:`~.sigma_delta_functions.Smooth`,
  :class:`~.sigma_delta_functions.Product`); :mod:`.sigma_delta` — the Σ-Δ neurons
  (:class:`SigmaDeltaNode`, :class:`SigmaDeltaProduct`): ladder spikes whose rate tends to f(mean
  input), or to the product of two mean inputs, with the MT neuron, the signed neuron and the spiking
  max-pool as the family's other members;
* :mod:`.registry` — :data:`NEURON_TYPES` and :data:`FACTORIES` (the CLI reads its ``--neuron``
  choices from it), :func:`mt_factory`.

The static input synapse (:class:`~sjunet.layers.static_synapse.StaticInputSynapse`, the first analog
layer) is a layer, not a neuron; it is re-exported here as before.

**A new neuron** is one module here subclassing :class:`SpikingNeuron`, registered in
:mod:`.registry`, with its tests in ``tests/neurons/``; the recipe, flow, energy and plots need no edit.
Every name below is importable from ``sjunet.neurons``.
"""
from sjunet.layers.static_synapse import StaticInputSynapse
from sjunet.neurons.base import (AUTO, LADDERS, AdvancedByStep, NeuronFactory, SpikingNeuron, compile_pays,
                                 compile_status, is_halving, is_neuron, named_ladder, refuse_signed, set_compiled,
                                 set_recording, threshold_ladder, validate_ladder)
from sjunet.neurons.mt import IFNode, MultiThresholdNode, mt_step, mt_step_surrogate
from sjunet.neurons.peers import MultiLevelNode, RealSpikeNode, ml_factory, rs_factory
from sjunet.neurons.registry import FACTORIES, NEURON_TYPES, mt_factory, per_layer_factory
from sjunet.neurons.sigma_delta import SigmaDeltaNode, SigmaDeltaProduct, is_sigma_delta, sigma_delta_step
from sjunet.neurons.signed import SignedMultiThresholdNode, leaky, signed_mt_step, signed_mt_step_surrogate

__all__ = ["AUTO", "AdvancedByStep", "FACTORIES", "LADDERS", "named_ladder", "IFNode", "MultiLevelNode", "MultiThresholdNode", "NEURON_TYPES",
           "NeuronFactory", "RealSpikeNode", "SignedMultiThresholdNode", "SpikingNeuron", "StaticInputSynapse",
           "compile_pays", "compile_status", "set_compiled", "is_halving", "is_neuron", "leaky", "ml_factory",
           "mt_factory", "per_layer_factory", "mt_step", "mt_step_surrogate",
           "refuse_signed", "rs_factory", "set_recording", "signed_mt_step", "signed_mt_step_surrogate",
           "SigmaDeltaNode", "SigmaDeltaProduct", "is_sigma_delta", "sigma_delta_step",
           "threshold_ladder", "validate_ladder"]
