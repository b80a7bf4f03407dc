"""The converted network (spec §6, §14): one typed object, its file, its simulation.

The parts, lowest first:

* :mod:`.record` — what an SNN file's record may ask for: limits, and every module's arguments
  checked as data;
* :mod:`.model` — :class:`SpikingUNet` (the converted ``GraphModule`` plus its typed
  :class:`SNNRecord`) and :func:`size_rule`, the one size rule of the library;
* :mod:`.file` — the SNN file: safetensors tensors + a plain record that rebuilds the graph (no code
  runs from a file), fingerprinted;
* :mod:`.shapes` — what the network's own shapes allow: the record's size fields and module
  arguments bounded by the graph (checked at load);
* :mod:`.footprint` — the shapes and the memory of one run on one input (and the memory budget),
  known before anything is allocated;
* :mod:`.fusion` — single steps on a CPU with each convolution (and a norm's centring and gain)
  adding into the membrane of the neuron it feeds, channels-last: what :func:`simulate` runs by default;
* :mod:`.simulation` — T-step simulation and decoding (:func:`simulate`), the flow record
  fine-tuning uses; :func:`~.simulation.check_run` runs :mod:`.footprint` before a network from a
  record runs.

A new module type an SNN may hold (a neuron, a stage) is registered in :mod:`.record`'s vocabulary
(neurons: :data:`sjunet.neurons.registry.NEURON_TYPES`); tests: ``tests/snn/``. Writing and reading files from a
conversion is :func:`sjunet.conversion.recipe.save_snn` / :func:`~sjunet.conversion.recipe.load_snn`.
"""
from sjunet.snn.model import (Conversion, SNNRecord, SizeRule, SpikingUNet, input_fingerprint, record_of, shape_rule,
                              size_rule)
from sjunet.snn.simulation import MODES, FlowRecord, record_flow, run_steps, simulate

__all__ = ["Conversion", "FlowRecord", "MODES", "SNNRecord", "SizeRule", "SpikingUNet", "input_fingerprint",
           "record_flow", "record_of", "run_steps", "shape_rule", "simulate", "size_rule"]
