"""The SNN's building blocks that are not neurons — the lowest layer of sjunet (it imports nothing
else of it).

* :mod:`.dims` — the one table of layer types by (op, spatial dimensionality): 2-D images and 3-D
  volumes convert alike; **a new dimensionality** is a row there;
* :mod:`.stages` — the SNN's non-neuron stages (interpolation, padding, per-channel affine, spiking
  max-pool, adaptive average pooling, a norm's centring and fixed division), each with its ANN form,
  its spiking form and its form on accumulated flows; **a new stage** is a class there (listed in
  :data:`~sjunet.layers.stages.STAGE_TYPES`), with its rewrite in :mod:`sjunet.graph.canonical_ops`,
  its kind in :mod:`sjunet.graph.kinds`, its file vocabulary in :mod:`sjunet.snn.record` and its
  fan-out in :mod:`sjunet.evaluation.fanout`;
* :mod:`.plumbing` — transformer plumbing as linear stages (spec §15): reshape with the batch
  anywhere, permute, static indexing, repeat, roll, a constant added (a bias current), a constant
  factor; exact per step in both step modes;
* :mod:`.static_synapse` — :class:`~sjunet.layers.static_synapse.StaticInputSynapse`, the first
  (analog) synaptic layer under static coding;
* :mod:`.buffers` — buffers reused across simulation steps (:class:`~sjunet.layers.buffers.Buffered`,
  :func:`~sjunet.layers.buffers.streaming`): what lets neurons and stages allocate nothing per step.

Tests: ``tests/layers/``.
"""
