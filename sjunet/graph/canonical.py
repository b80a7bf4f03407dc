"""The canonical graph (spec §5, §11): what every later stage works on — calibration, the
normalization plan, the SpikingJelly recipe, energy and plots.

:func:`canonical_graph` turns any FX-traceable U-Net (sjunet's own, MONAI, segmentation_models_
pytorch, hand-written) into it:

1. :func:`sjunet.graph.tracing.trace` — ``torch.fx`` tracing, shape decisions taken on an example
   input of the given shape, sizes computed from shapes specialised to constants, and the size rule
   they hold for (:mod:`sjunet.graph.tracing`);
2. :func:`canonicalize` — the rewrites, in order (:mod:`sjunet.graph.canonical_ops`: modules called
   twice unshared, identities and dropout removed, every ReLU spelling made a module, adds and cats,
   functional layers made modules, pooling, interpolation and padding made stages, output-side ops
   stripped; :mod:`sjunet.graph.canonical_norms`: instance / group / layer norms made Center →
   Normalize → ChannelAffine, BatchNorm folded; :mod:`sjunet.graph.canonical_sigma`: constants
   folded, smooth activations, products, a layer norm over trailing dimensions and transformer
   plumbing made the modules Σ-Δ neurons and linear stages replace, spec §15). Each keeps the
   network's function exactly;
3. a plain retrace (:func:`sjunet.graph.tracing.retrace`), so node names are exactly those
   SpikingJelly's converter sees when it traces the canonical graph (statistics are keyed by node
   name);
4. :func:`sjunet.graph.refusals.check_supported` — anything left that has no faithful spiking
   counterpart is refused. All blockers of a model (from tracing, rewriting and this check) come in
   one :class:`~sjunet.errors.UnsupportedGraphError`: a summary line, then one line per root cause —
   node, source line, cause, remedy.

A new rewrite (another spelling of a supported op) is a function in :mod:`.canonical_ops` (or
:mod:`.canonical_norms`) called from :func:`canonicalize`, with its tests in ``tests/graph/``.
"""
from __future__ import annotations

from typing import Iterable

from torch import fx, nn

from sjunet.graph.canonical_norms import fold_batchnorms, norm_stages
from sjunet.graph.canonical_ops import (adaptive_pools, adds_and_cats, functional_layers, relus, remove_identities,
                                        resample_and_pad, stack_sums, strip_post, unshare, zero_channel_cats)
from sjunet.graph.canonical_rewrite import rewrite as sigma_rewrites
from sjunet.graph.refusals import all_blockers, check_supported
from sjunet.graph.sizes import size_rule_of_trace, trace_key
from sjunet.graph.tracing import Trace, retrace, trace
from sjunet.layers import dims


def canonicalize(gm: fx.GraphModule, blockers: list | None = None, example_shape=None,
                 specialised: list | None = None) -> list[dict]:
    """Rewrite ``gm`` in place (module docstring); returns the stripped output-side ops. Nodes it
    cannot rewrite are added to ``blockers`` (without a list: raise at the first). ``example_shape``:
    the input the graph was traced for (the rewrites that need channel counts, and the Σ-Δ and plumbing
    rewrites, measure shapes on it; sizes they take from it are appended to ``specialised``)."""
    nd = dims.spatial_dims(gm)  # the network's (its convolutions'): 2 for images, 3 for volumes
    unshare(gm)
    remove_identities(gm)
    relus(gm)
    adds_and_cats(gm)
    zero_channel_cats(gm, example_shape)
    stack_sums(gm)
    functional_layers(gm, blockers, nd)
    adaptive_pools(gm, blockers, nd)
    resample_and_pad(gm, blockers, nd)
    post = strip_post(gm)
    norm_stages(gm, blockers, nd)
    sigma_rewrites(gm, example_shape, blockers, specialised)
    fold_batchnorms(gm, blockers)
    dims.set_spatial_dims(gm, nd)  # per-channel stages broadcast over nd spatial axes
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return post


def canonical_graph(model: nn.Module, example_shape: Iterable[int] | None = None, check: bool = True) -> Trace:
    """The canonical graph of ``model`` (module docstring, steps 1–4). ``check=False``: every blocker
    is left in :attr:`Trace.blockers` instead of raised (calibration adds the approximation gap to
    them, so a model hears all its blockers at once: :func:`sjunet.graph.refusals.check_supported`);
    the graph of a blocked model still runs as the ANN, and has no size rule."""
    tr = trace(model, example_shape)
    key = trace_key(tr) if tr.specialised else None  # the graph as traced, for the size rule
    found = list(tr.blockers)
    traced = len(tr.specialised)  # what tracing specialised; the Σ-Δ rewrites may add stages of the example's size
    tr.post = canonicalize(tr.gm, found, tr.example_shape, tr.specialised)
    tr.gm = retrace(tr.gm)
    if check:
        check_supported(tr.gm, type(model).__name__, found)
    else:
        tr.blockers = all_blockers(tr.gm, found)
        if tr.blockers:
            return tr
    if tr.specialised:
        tr.size_rule = size_rule_of_trace(model, tr, key, only_example=len(tr.specialised) > traced)
    return tr
