"""The converted network as one typed object (spec §14): :class:`SpikingUNet`.

A :class:`SpikingUNet` is the ``torch.fx.GraphModule`` the converter builds (same modules, same
graph, same ``state_dict`` keys, in the same order) plus :attr:`SpikingUNet.record`, an
:class:`SNNRecord`:

=================  ================================================================================
``conversion``     :class:`Conversion`: options (norm, neuron, ladder, v_init), λ per neuron, gains,
                   per-layer plan, approximations (fixed norm deviations) and their gap, input /
                   output channels, fingerprints of the ANN and the statistics, the graph's size
                   multiple(s) and the trace's size rule
``graph``          the graph as data (:func:`sjunet.snn.file.graph_spec`): what an SNN file rebuilds
``post``           output ops applied to the accumulated output (:func:`sjunet.graph.canonical_ops.apply_post`)
``model``          the architecture it came from (sjunet config or ``--arch`` factory)
``task``           what the network does (segmentation / denoising)
``finetune``       the fine-tuning record and history (``None``: converted, not fine-tuned)
``provenance``     where a loaded file came from (versions, sources); a save writes a fresh one
=================  ================================================================================

The file format (tensors + this record) is :mod:`sjunet.snn.file`; :func:`sjunet.conversion.recipe.save_snn` /
:func:`sjunet.conversion.recipe.load_snn` write and read it. :func:`size_rule` is the one size rule of the
library: what the input sides of any network (an SNN: its record; an ANN: declared or probed) must
be multiples of.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields

from torch import fx, nn

from sjunet.snn.record import SNN_OWN_NAMES

# ----------------------------------------------------------------------------- the record


@dataclass
class Conversion:
    """The conversion record of :func:`sjunet.conversion.recipe.convert` (JSON-able; the file's ``conversion``).

    Every key of the record is a field; keys this class does not know (a stock or older record)
    are kept in ``extra``. :meth:`to_dict` gives back exactly the dict :meth:`from_dict` read.
    """

    options: dict = field(default_factory=dict)
    ann_fingerprint: str | None = None
    stats_fingerprint: str | None = None
    layers: dict | None = None
    neurons: dict | None = None  #: neuron module path -> {relu, lambda, fallback, cap, negative_slope}
    #: Σ-Δ neuron module path -> {node, function or product, its input units, lambda} (spec §15)
    sigma_delta: dict | None = None
    gains: list | None = None  #: identity-edge gains: {source, consumer, min, max}
    dead_layers: list | None = None
    trace_decisions: list | None = None
    specialised: list | None = None
    size_rule: dict | None = None  #: the trace's rule for shape-specialised constants (``shape`` / ``multiple``)
    post: list | None = None
    input_channels: int | None = None
    output_channels: int | None = None
    example_shape: list | None = None
    size_multiple: int | None = None  #: H, W multiple (volumes: the largest axis multiple)
    size_multiples: list | None = None  #: volumes: the multiple of each axis (D, H, W)
    approximations: list | None = None
    approximation_gap: dict | None = None
    #: per-layer ladders (``thresholds="auto"``): ReLU node -> the choice and its expected error (sjunet.conversion.ladders)
    ladders: dict | None = None
    extra: dict = field(default_factory=dict)
    #: the record's keys, in order (a key whose value is None is written only when it was there)
    keys: tuple = field(default=(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict | None) -> Conversion:
        d = dict(d or {})
        names = {f.name for f in fields(cls)} - {"extra", "keys"}
        known = {k: v for k, v in d.items() if k in names}
        return cls(**known, extra={k: v for k, v in d.items() if k not in names}, keys=tuple(d))

    def to_dict(self) -> dict:
        names = [f.name for f in fields(self) if f.name not in ("extra", "keys")]
        present = set(self.keys)
        out = {}
        for k in list(self.keys) + [n for n in names if n not in self.keys] + [k for k in self.extra if k not in present]:
            if k in out:
                continue
            if k in self.extra and k not in names:
                out[k] = self.extra[k]
            elif k in names and (k in present or getattr(self, k) is not None):
                out[k] = getattr(self, k)
        return out

    # the options, named
    @property
    def norm(self) -> str | None:
        return self.options.get("norm")

    @property
    def neuron(self) -> str | None:
        return self.options.get("neuron")

    @property
    def thresholds(self) -> list | None:
        return self.options.get("thresholds")

    @property
    def lambdas(self) -> dict[str, float]:
        """Neuron module path -> λ (the activation scale its layer was normalised by)."""
        return {p: v["lambda"] for p, v in (self.neurons or {}).items()}


@dataclass
class SizeRule:
    """What inputs a converted network takes: ``multiple`` (an int: every spatial side a multiple
    of it; a tuple: per axis, D, H, W), ``multiples`` (always per axis) and ``shape`` (only this
    spatial size, when shape-specialised constants hold for no other; else ``None``)."""

    multiple: int | tuple[int, ...] | None
    multiples: tuple[int, ...] | None
    shape: tuple[int, ...] | None


@dataclass
class SNNRecord:
    """Everything a :class:`SpikingUNet` knows about itself (module docstring)."""

    conversion: Conversion = field(default_factory=Conversion)
    graph: dict | None = None
    post: list = field(default_factory=list)
    model: dict = field(default_factory=dict)
    task: dict | str | None = None
    finetune: dict | None = None
    provenance: dict | None = None

    #: the fields an SNN file's record holds for the network (save adds ``provenance`` itself)
    SAVED = ("conversion", "graph", "post", "model", "task", "finetune")

    @classmethod
    def from_dict(cls, rec: dict) -> SNNRecord:
        """The typed record of an SNN file's record (``conversion``, ``graph``, ``post``, ``model``,
        ``task``, ``finetune``, ``provenance``; the rest — kind, format, hash — is the file's)."""
        return cls(conversion=Conversion.from_dict(rec.get("conversion")), graph=rec.get("graph"),
                   post=list(rec.get("post") or []), model=dict(rec.get("model") or {}), task=rec.get("task"),
                   finetune=rec.get("finetune"), provenance=rec.get("provenance"))

    def to_dict(self) -> dict:
        """The network's part of an SNN file's record (:data:`SAVED`)."""
        return {"conversion": self.conversion.to_dict(), "graph": self.graph, "post": self.post,
                "model": self.model, "task": self.task, "finetune": self.finetune}

    @property
    def size(self) -> SizeRule:
        """The input size rule of the network (:class:`SizeRule`)."""
        c = self.conversion
        rule = c.size_rule or {}
        shape = tuple(int(v) for v in rule["shape"]) if rule.get("shape") else None
        if c.size_multiples:
            per_axis = tuple(int(v) for v in c.size_multiples)
            return SizeRule(per_axis, per_axis, shape)
        if c.size_multiple:
            m = int(c.size_multiple)
            nd = len(c.example_shape) - 2 if c.example_shape else 2
            return SizeRule(m, (m,) * nd, shape)
        return SizeRule(None, None, shape)


# ----------------------------------------------------------------------------- the network


class SpikingUNet(fx.GraphModule):
    """A converted (or fine-tuned, or directly trained) Spiking-UNet: a ``GraphModule`` with a
    typed :attr:`record` (:class:`SNNRecord`).

    ``source`` says where it was read from (``{"path", "fingerprint"}`` of the file, set by
    :func:`sjunet.conversion.recipe.load_snn`; ``None`` for a network made in memory); it is not saved.
    ``copy.deepcopy`` keeps both (a plain GraphModule's deepcopy keeps only modules and graph);
    ``.to()``, ``state_dict``, SpikingJelly's ``reset_net`` / ``set_step_mode`` and DDP work as
    on any GraphModule.
    """

    record: SNNRecord
    source: dict | None

    def __init__(self, root: nn.Module | dict, graph: fx.Graph, record: SNNRecord | None = None,
                 class_name: str = "SpikingUNet") -> None:
        super().__init__(root, graph, class_name)
        self.record = record if record is not None else SNNRecord()
        self.source = None

    @classmethod
    def adopt(cls, gm: fx.GraphModule, record: SNNRecord | None = None) -> SpikingUNet:
        """Make ``gm`` a :class:`SpikingUNet` in place — the same module objects in the same order
        (so the same ``state_dict``, keys and order: the same file and the same numbers), its code
        regenerated — and give it ``record``. Returns ``gm``."""
        if isinstance(gm, SpikingUNet):
            if record is not None:
                gm.record = record
            return gm
        if not isinstance(gm, fx.GraphModule):
            raise TypeError(f"a SpikingUNet is a GraphModule; got {type(gm).__name__}")
        clash = sorted(set(gm._modules) & OWN_NAMES)
        if clash:  # the generated forward calls self.<name>: an attribute of ours would shadow the module
            from sjunet.io import ArtifactError

            raise ArtifactError(f"module {clash[0]!r} of the network has the name of a SpikingUNet attribute "
                                f"({', '.join(sorted(OWN_NAMES))}); rename it in the model")
        # the per-instance class GraphModule.__new__ would make (each instance owns its forward)
        impl = type("GraphModuleImpl", (cls,), {})
        impl.__name__ = type(gm).__name__  # what GraphModule.__init__ names it (e.g. the ANN's class)
        gm.__class__ = impl
        gm.recompile()
        gm.record = record if record is not None else SNNRecord()
        gm.source = None
        return gm

    def _deepcopy_init(self):
        name = type(self).__name__

        def init(res, root, graph):
            fx.GraphModule.__init__(res, root, graph, name)
        return init

    def __deepcopy__(self, memo: dict) -> SpikingUNet:
        res = super().__deepcopy__(memo)
        res.record = copy.deepcopy(self.record, memo)
        res.source = copy.deepcopy(getattr(self, "source", None), memo)
        return res

    def __copy__(self) -> SpikingUNet:
        res = SpikingUNet.adopt(super().__copy__(), self.record)
        res.source = getattr(self, "source", None)
        return res

    def rebuilt(self) -> SpikingUNet:
        """This network as its SNN file rebuilds it, without a file: the modules built from the
        graph record (:func:`sjunet.snn.file.rebuild`), in a loaded file's order (a converted
        network registers them in conversion order: the same ``state_dict`` keys, another order),
        with a copy of the tensors and the record."""
        from sjunet.snn.file import rebuild

        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        out = SpikingUNet.adopt(rebuild(self.record.graph, tensors), copy.deepcopy(self.record))
        out.source = copy.deepcopy(getattr(self, "source", None))
        return out

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the tensors and the record's network fields: the same for a network
        and the file it was saved to, loaded back. Where it was read from, ``source["fingerprint"]``
        (the file's bytes) is what runs record instead (:func:`input_fingerprint`)."""
        from sjunet.io import jsonable, tensor_digest

        h = tensor_digest({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()})
        h.update(json.dumps(jsonable(self.record.to_dict()), sort_keys=True, allow_nan=False).encode())
        return h.hexdigest()[:16]


#: names SpikingUNet adds to a GraphModule: no top-level module may take them (nor, in a file, a module path)
OWN_NAMES = SNN_OWN_NAMES
_added = {k for k in vars(SpikingUNet) if not k.startswith("__") and k not in vars(fx.GraphModule)} | {"record", "source"}
assert _added - {"_deepcopy_init"} == OWN_NAMES, f"sjunet.snn.record.SNN_OWN_NAMES must list {sorted(_added)}"


def input_fingerprint(snn: SpikingUNet) -> str:
    """The fingerprint a run records for its input network: the file's (``source``) when it was
    read from one, else :meth:`SpikingUNet.fingerprint`."""
    src = getattr(snn, "source", None) or {}
    return src.get("fingerprint") or snn.fingerprint()


def record_of(net: nn.Module) -> SNNRecord | None:
    """The record of a :class:`SpikingUNet` (``None`` for any other module)."""
    return net.record if isinstance(net, SpikingUNet) else None


# ----------------------------------------------------------------------------- the size rule


def size_rule(net: nn.Module, in_channels: int | None = None) -> int | tuple[int, ...]:
    """What the input sides of ``net`` must be multiples of — the one size rule of sjunet.

    An int applies to every spatial axis (images: H and W); a tuple is per axis (volumes: D, H, W;
    an anisotropic U-Net pools some axes less). A :class:`SpikingUNet` answers from its record
    (refused when the record has none: a stock conversion); any other model declares it
    (``net.size_multiple``, sjunet's U-Net: ``2**depth``; ``net.config.depth``) or it is probed:
    the input size over the smallest feature map of its canonical graph on a 256×256 probe
    (volumes: 64³, per axis).
    """
    if isinstance(net, SpikingUNet):
        m = net.record.size.multiple
        if m is None:
            raise ValueError("this SNN records no size multiple (not converted by sjunet.convert): pass multiple=, "
                             "the ANN's")
        return m
    m = getattr(net, "size_multiple", None)
    if isinstance(m, int) and m > 0:
        return m
    if isinstance(m, tuple) and m and all(isinstance(v, int) and v > 0 for v in m):
        return m  # per axis (a 3-D U-Net: D, H, W)
    cfg = getattr(net, "config", None)
    if getattr(cfg, "depth", None) is not None:
        nd = int(getattr(cfg, "spatial_dims", 2))
        return 2 ** int(cfg.depth) if nd == 2 else (2 ** int(cfg.depth),) * nd
    from sjunet.graph import canonical_graph, feature_maps, size_multiples, tensor_shapes
    from sjunet.graph import size_multiple as graph_multiple
    from sjunet.layers.dims import CONV_TYPES, spatial_dims

    nd = spatial_dims(net)
    if nd != 2:
        c = in_channels or next((m.in_channels for m in net.modules() if isinstance(m, CONV_TYPES)), 1)
        probe = (64,) * nd
        gm = canonical_graph(net, (1, c, *probe)).gm
        return size_multiples(feature_maps(gm, tensor_shapes(gm, (c, *probe))), probe)
    c = in_channels or next((m.in_channels for m in net.modules() if isinstance(m, nn.Conv2d)), 1)
    gm = canonical_graph(net, (1, c, 256, 256)).gm
    return graph_multiple(feature_maps(gm, tensor_shapes(gm, (c, 256, 256))), (256, 256))


def shape_rule(net: nn.Module) -> dict | None:
    """The trace's size rule of a :class:`SpikingUNet` (shape-specialised constants: ``shape`` when
    they hold for one input size only, else ``multiple``); ``None`` for other modules."""
    rec = record_of(net)
    return rec.conversion.size_rule if rec is not None else None


__all__ = ["Conversion", "SNNRecord", "SizeRule", "SpikingUNet", "input_fingerprint", "record_of", "shape_rule",
           "size_rule"]
