"""What the converter understands of an FX graph (spec §5, §11): tracing, node kinds, refusals, the
rewrites to the canonical graph, one recorder.

The parts, lowest first (each imports only those before it):

* :mod:`.kinds` — node kinds (:func:`kind_of`) and the small questions every stage asks of a node
  (:func:`module_of`, :func:`cat_parts`, :func:`tensor_inputs`, :data:`SYNAPTIC_TYPES`…);
* :mod:`.refusals` — :class:`Blocker`, the model's source line of a node
  (:func:`~sjunet.graph.refusals.source_line`), :func:`find_blockers`, :func:`refusal_message`,
  :func:`check_supported`;
* :mod:`.record` — the one recorder (:class:`Recorder`, :func:`record_nodes`, :func:`tensor_shapes`);
* :mod:`.proxies` — what lets torch.fx trace past what it cannot: concrete values of the example
  input (``np.array(x.shape)``, ``int()``), modules created in ``forward``, factories sized by shapes, einops;
* :mod:`.tracing` — tracing with shape decisions and specialised sizes, :func:`retrace`;
* :mod:`.sizes` — the size rule the specialised sizes hold for, :func:`check_input_size`, a graph's
  size multiple(s);
* :mod:`.canonical_ops`, :mod:`.canonical_norms`, :mod:`.constants` (what does not depend on the
  input folded into buffers), :mod:`.canonical_sigma` (smooth activations, products and transformer
  plumbing made the modules Σ-Δ neurons and linear stages replace, spec §15) and
  :mod:`.canonical_rewrite` (those in order) — the rewrites; :mod:`.canonical` —
  :func:`canonicalize` (the rewrites in order) and :func:`canonical_graph` (trace → rewrite → retrace
  → check).

Where to change what: a new spelling of a supported op is a rewrite in :mod:`.canonical_ops`; a new
refusal with its remedy is in :mod:`.refusals`; a new node kind in :mod:`.kinds` (and a stage for it
in :mod:`sjunet.layers.stages`); a new spatial dimensionality is a row of :mod:`sjunet.layers.dims`.
Tests: ``tests/graph/``. Every name below is importable from ``sjunet.graph``.
"""
from sjunet.errors import UnsupportedGraphError
from sjunet.graph.canonical import canonical_graph, canonicalize
from sjunet.graph.canonical_norms import fold_bn_into
from sjunet.graph.canonical_ops import apply_post
from sjunet.graph.kinds import (AVG_POOL_TYPES, CAT_FUNCTIONS, MAX_POOL_TYPES, PASS_KINDS, SYNAPTIC_TYPES, cat_dim,
                                cat_parts, data_users, is_reference_use, kind_of, module_of, relu_cap, relu_slope,
                                target_name, tensor_inputs)
from sjunet.graph.record import Recorder, record_nodes, tensor_shapes
from sjunet.graph.refusals import (MAX_LISTED, Blocker, all_blockers, check_supported, find_blockers, refusal_message,
                                  source_line)
from sjunet.graph.sizes import check_input_size, feature_maps, size_multiple, size_multiples, size_rule_of_trace
from sjunet.graph.tracing import Trace, retrace, signature, size_reference, stages_are_leaves, trace

__all__ = ["AVG_POOL_TYPES", "CAT_FUNCTIONS", "MAX_LISTED", "MAX_POOL_TYPES", "PASS_KINDS", "SYNAPTIC_TYPES",
           "Blocker", "Recorder", "Trace", "UnsupportedGraphError", "all_blockers", "apply_post", "canonical_graph",
           "canonicalize",
           "cat_dim", "cat_parts", "check_input_size", "check_supported", "data_users", "feature_maps", "find_blockers",
           "fold_bn_into", "is_reference_use", "kind_of", "module_of", "record_nodes", "refusal_message", "relu_cap",
           "relu_slope", "retrace", "signature", "size_multiple", "size_multiples", "size_reference",
           "size_rule_of_trace", "source_line", "stages_are_leaves", "target_name", "tensor_inputs", "tensor_shapes",
           "trace"]
