"""Conversion (spec §5, §11): an ANN and its calibration statistics in, a
:class:`~sjunet.snn.model.SpikingUNet` out.

The parts: :mod:`.normalization` (paper Eq. 7/8: layer-wise and connection-wise normalization, the
per-part scaling of concatenations and the gains of residual joins, as a plan), :mod:`.ladders` (the
threshold ladder of each neuron layer, chosen from its calibration histogram: the default of MT
neurons) and :mod:`.recipe`
(the SpikingJelly ``ann2snn`` recipe that applies the plan and puts neurons in: :func:`convert`;
SpikingJelly's stock converter as the peer: :func:`convert_stock`; :func:`save_snn` /
:func:`load_snn`). A new normalization is a name in :data:`sjunet.conversion.normalization.NORMS` with
its units in :data:`~sjunet.conversion.normalization.ASSUMED_UNITS`; a new neuron needs no change here
(:mod:`sjunet.neurons.registry`). Tests: ``tests/conversion/``.
"""
from sjunet.conversion.normalization import NORMS, NormalizationPlan, apply_plan, plan_normalization
from sjunet.conversion.recipe import (NEURONS, ApproximationGapError, ConversionOptions, SpikingUNetRecipe, convert,
                                      convert_stock, fix_deviations, load_snn, save_snn)

__all__ = ["ApproximationGapError", "ConversionOptions", "NEURONS", "NORMS", "NormalizationPlan", "SpikingUNetRecipe",
           "apply_plan", "convert", "convert_stock", "fix_deviations", "load_snn", "plan_normalization", "save_snn"]
