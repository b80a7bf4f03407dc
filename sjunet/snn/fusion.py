"""The synapse integrates into the membrane (issue 29): a step at what an ANN forward costs on a CPU.

A converted layer is a convolution whose output, the input current I(t), goes to one neuron, whose
first act is V ← V + I(t). Run apart, the convolution writes I(t) to memory and the neuron reads it
back; fused, the convolution adds into the membrane as it writes (oneDNN's ``sum`` post-op,
``torch.ops.mkldnn._convolution_pointwise_``) and the neuron fires from V
(:meth:`~sjunet.neurons.SpikingNeuron.fire_into`). oneDNN's convolutions are fastest on
channels-last tensors (a width-16 layer at 512²: 9 ms against 27 ms for PyTorch's default layout on
the development CPU), so a fused run keeps its images channels-last from the first layer on; the
buffers that neurons and stages reuse across steps follow their input's layout
(:meth:`sjunet.layers.buffers.Buffered.step_buffer`), and the network's output is handed back in the
default layout.

:func:`fused` builds, once per network, a ``GraphModule`` that shares the network's modules (their
states, recording and counters are the network's) with every convolution → neuron chain whose
convolution feeds nothing else replaced by an :class:`IntegratingConv`; a norm's mean subtraction
and gain between them (MONAI's instance norm) fuse too, as the convolution's scaled weights and
per-image bias. It is used for single-step runs of :func:`~sjunet.snn.simulation.simulate` on a CPU
when at least half the neuron layers are fed that way (otherwise the layout alone does not pay: it
slowed MONAI's BasicUNet before its centred layers fused), and a layer runs fused from
:data:`MIN_FUSED` output elements on. The numbers are the unfused run's within float rounding: the fused
convolution rounds its sum once, the unfused one twice, and a different kernel sums in a different
order, so a membrane at a threshold can fire one step apart (measured in ``python -m
sjunet.benchmarks step_cost``). Anything the fused path does not cover — autograd, hooks (a monitor),
multi-step mode, a layout it did not set up — runs the pair unfused.
"""
from __future__ import annotations

import math
import operator
import weakref

import torch
from torch import fx, nn

from sjunet.layers.buffers import call_counts, channels_last
from sjunet.layers.static_synapse import StaticInputSynapse
from sjunet.neurons import is_neuron


def available(device: torch.device | str = "cpu") -> bool:
    """Whether fused convolutions run here: a CPU with PyTorch's oneDNN (mkldnn) operators."""
    return (torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise_"))


def fusable(conv: nn.Module, *rest: nn.Module) -> bool:
    """Whether ``conv`` → [centre → [affine] →] neuron can run fused: a 2-D convolution with zero
    padding given as numbers, float32 (ungrouped before a centre, whose groups split its channels),
    into a neuron that fires from an integrated membrane (:meth:`fire_into`)."""
    *norms, neuron = rest
    ok = (type(conv).forward is _CONV_FORWARD.get(type(conv)) and isinstance(conv, nn.Conv2d)
          and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
          and conv.weight.dtype == torch.float32 and is_neuron(neuron) and neuron.fires_integrated
          and not neuron.store_v_seq)
    if ok and norms:
        ok = conv.groups == 1 and conv.out_channels % norms[0].groups == 0
        if len(norms) == 2:
            ok = ok and norms[1].scale.numel() == conv.out_channels and norms[1].scale.dtype == torch.float32
    return ok


def _conv_forwards() -> dict:
    """The convolution classes whose forward is a plain ``conv2d`` (torch's and SpikingJelly's, whose
    multi-step mode only folds the time axis into the batch)."""
    out = {nn.Conv2d: nn.Conv2d.forward}
    try:
        from spikingjelly.activation_based import layer

        out[layer.Conv2d] = layer.Conv2d.forward
    except ImportError:  # pragma: no cover - spikingjelly is a dependency
        pass
    return out


_CONV_FORWARD = _conv_forwards()


#: the smallest layer output (elements) that runs fused: a fused call pays oneDNN's set-up (its weights
#: reordered, ~0.25 ms a call on the development CPU) and saves passes over memory. Measured per step,
#: fused ÷ unfused, width-16 U-Net, one thread: 1.53 / 1.27 / 0.95 / 0.83 at 32² / 64² / 128² / 256² with
#: every layer fused, 0.96 / 0.98 / 0.88 / 0.82 with this threshold (0.82 at 512², ``step_cost``)
MIN_FUSED = 1 << 18


class IntegratingConv(nn.Module):
    """A convolution adding its output into the membrane of the neuron it feeds, then the neuron's
    :meth:`fire_into` (module docstring). Falls back to the modules run apart where the fused path
    does not hold: autograd on, a hook on any of them, multi-step mode, or a membrane not channels-last.

    With ``center`` (a norm's mean subtraction, :class:`~sjunet.layers.stages.Center`) and ``affine``
    (the :class:`~sjunet.layers.stages.ChannelAffine` after it) between them, the current is
    I = s·(y − mean_g(y)) + b for y = W∗x + β: a convolution with weights s·W and, per image, the
    bias s·(β − mean_g(y)) + b. The means over positions come from the input before the convolution
    runs (:func:`tap_sums`: one read of x), so the centred layer is one fused convolution too."""

    def __init__(self, conv: nn.Conv2d, neuron: nn.Module, center: nn.Module | None = None,
                 affine: nn.Module | None = None) -> None:
        super().__init__()
        # plain attributes, not submodules: the network owns them (its state dict, its named modules)
        self.__dict__.update(conv=conv, neuron=neuron, center=center, affine=affine)
        self._masks: dict = {}

    def _apart(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.center is not None:
            y = self.center(y)
        if self.affine is not None:
            y = self.affine(y)
        return self.neuron(y)

    def _modules_hooked(self) -> bool:
        return any(m is not None and (m._forward_hooks or m._forward_pre_hooks)
                   for m in (self.conv, self.center, self.affine)) or bool(self.neuron._forward_pre_hooks)

    def _centred(self, x: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights and the per-image biases [B, O] of the centred current (class docstring)."""
        conv, w = self.conv, self.conv.weight
        key = (*shape[2:], *x.shape[2:])
        masks = self._masks.get(key)
        if masks is None:
            masks = self._masks[key] = [
                tap_mask(n, m, k, p, d, s) for n, m, k, p, d, s in zip(
                    x.shape[2:], shape[2:], conv.kernel_size, conv.padding, conv.dilation, conv.stride)]
        sums = tap_sums(x, *masks)  # [B, C, kh, kw]
        beta = conv.bias if conv.bias is not None else sums.new_zeros(shape[1])
        mean = torch.einsum("ockl,bckl->bo", w, sums) / (shape[2] * shape[3]) + beta  # mean of y over positions
        groups = self.center.groups
        mean = mean.view(mean.shape[0], groups, -1).mean(-1, keepdim=True)  # ... and over each group's channels
        bias = beta - mean.expand(-1, -1, shape[1] // groups).reshape(mean.shape[0], -1)  # [B, O]
        if self.affine is None:
            return w, bias
        s = self.affine.scale
        bias = bias * s
        if self.affine.shift is not None:
            bias = bias + self.affine.shift
        return w * s.view(-1, 1, 1, 1), bias

    def _out_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        c = self.conv
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1
                for n, p, d, k, s in zip(x.shape[2:], c.padding, c.dilation, c.kernel_size, c.stride)]
        return (x.shape[0], c.out_channels, *size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, neuron = self.conv, self.neuron
        if (torch.is_grad_enabled() or x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.float32
                or any(getattr(m, "step_mode", "s") != "s" for m in (conv, self.center, self.affine, neuron))
                or self._modules_hooked()):
            return self._apart(x)
        shape = self._out_shape(x)
        if math.prod(shape) < MIN_FUSED:
            return self._apart(x)
        out = neuron.step_buffer("out", shape, x, last=True)  # also the layout the states take
        if not neuron.in_place(out):
            return self._apart(x)
        states = neuron._owned_states(out)
        v = states[0]
        if not v.is_contiguous(memory_format=torch.channels_last):
            return self._apart(x)
        if not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, "add", 1.0, None, [], None)
        if self.center is None:
            torch.ops.mkldnn._convolution_pointwise_.binary(v, x, conv.weight, conv.bias, *args)  # V ← V + W∗x + β
        else:
            w, bias = self._centred(x, shape)
            for b in range(x.shape[0]):  # the bias is per image: V_b ← V_b + (sW)∗x_b + bias_b
                torch.ops.mkldnn._convolution_pointwise_.binary(v[b:b + 1], x[b:b + 1], w, bias[b], *args)
        neuron._keep(neuron.fire_into(out, states))
        return out


def tap_mask(n: int, m: int, k: int, p: int, d: int, s: int) -> torch.Tensor:
    """[n, k] 0/1: whether input index i (of n, along one axis) is read by tap j of a convolution with
    m outputs, padding p, dilation d and stride s along it (i = o·s + j·d − p for an output o < m)."""
    i = torch.arange(n).view(-1, 1) + p - torch.arange(k).view(1, -1) * d
    return ((i % s == 0) & (i >= 0) & (i // s < m)).float()


def tap_sums(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """S[b, c, kh, kw] = Σ of x[b, c] over the positions tap (kh, kw) of a convolution reads, its output
    positions all counted (``rows`` / ``cols``: :func:`tap_mask`): Σ_o (W∗x)[o] = Σ W·S, so the mean of
    a convolution's output over positions is known from its input. One pass over x (laid out
    channels-last, a matrix product per row)."""
    xt = x.permute(0, 2, 3, 1)  # [B, H, W, C]: the memory order of a channels-last batch
    a = torch.matmul(cols.t().to(x.dtype), xt)  # [B, H, kw, C]
    return torch.einsum("hk,bhlc->bckl", rows.to(x.dtype), a)


class ChannelsLast(nn.Module):
    """The layout change after a static input synapse: its output is one tensor per image, so the
    converted copy is kept and reused while the same tensor comes in (as the synapse caches)."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or channels_last(x) or torch.is_grad_enabled():
            return x
        if self._cache is None or self._cache[0] is not x:
            self._cache = (x, x.contiguous(memory_format=torch.channels_last))
        return self._cache[1]


def chains(net: fx.GraphModule) -> list[list[fx.Node]]:
    """The node chains of ``net`` that can run fused: convolution → neuron, or convolution → centre
    [→ channel affine] → neuron, each node the one user of the one before and each module called at
    that one place of the graph (:func:`fusable`)."""
    from sjunet.layers.stages import Center, ChannelAffine

    mods = dict(net.named_modules())
    calls = call_counts(net)

    def next_of(n: fx.Node) -> fx.Node | None:
        if len(n.users) != 1:
            return None
        u = next(iter(n.users))
        ok = u.op == "call_module" and u.args == (n,) and not u.kwargs and calls[u.target] == 1
        return u if ok else None

    found = []
    for n in net.graph.nodes:
        if n.op != "call_module" or len(n.args) != 1 or n.kwargs or calls[n.target] != 1:
            continue
        chain, u = [n], next_of(n)
        if u is not None and type(mods[u.target]) is Center:
            chain.append(u)
            u = next_of(u)
            if u is not None and type(mods[u.target]) is ChannelAffine:
                chain.append(u)
                u = next_of(u)
        if u is not None and fusable(*(mods[c.target] for c in chain), mods[u.target]):
            found.append([*chain, u])
    return found


_RUNNERS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def fused(net: nn.Module, x: torch.Tensor) -> nn.Module | None:
    """The fused form of ``net`` for single steps on ``x`` (module docstring), or None where it does
    not apply: not a graph, not a CPU with oneDNN, a batch that is not 2-D images, or fewer than half
    the neuron layers fed by a fusable convolution. Built once per network (and graph)."""
    if not isinstance(net, fx.GraphModule) or x.dim() != 4 or x.dtype != torch.float32 or not available(x.device):
        return None
    key = (id(net.graph), len(net.graph.nodes))
    hit = _RUNNERS.get(net)
    if hit is not None and hit[0] == key:
        return hit[1]
    runner = _build(net)
    if runner is not None:  # the network's own hooks (a progress bar counting steps) see the fused steps
        for name in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                     "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs"):
            if hasattr(net, name):
                setattr(runner, name, getattr(net, name))  # the same dicts: hooks added later count too
    _RUNNERS[net] = (key, runner)
    return runner


def _build(net: fx.GraphModule) -> nn.Module | None:
    found = chains(net)
    neurons = sum(1 for m in net.modules() if is_neuron(m))
    if not found or 2 * len(found) < neurons:
        return None
    mods = dict(net.named_modules())
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(net.graph, env)
    root: dict[str, object] = {}
    for n in net.graph.nodes:
        if n.op == "call_module":
            root[n.target] = mods[n.target]
        elif n.op == "get_attr":
            root[n.target] = operator.attrgetter(n.target)(net)
    for i, chain in enumerate(found):
        conv, *norms, neuron = (mods[n.target] for n in chain)
        name = f"_fused_{i}"
        root[name] = IntegratingConv(conv, neuron, *norms)
        last = env[chain[-1]]
        with graph.inserting_after(last):
            f = graph.call_module(name, env[chain[0]].args)
        last.replace_all_uses_with(f)
        for n in reversed(chain):
            graph.erase_node(env[n])
    for i, n in enumerate([n for n in graph.nodes if n.op == "call_module"
                           and isinstance(root.get(n.target), StaticInputSynapse)]):
        name = f"_channels_last_{i}"
        root[name] = ChannelsLast()
        with graph.inserting_after(n):
            cl = graph.call_module(name, (n,))
        n.replace_all_uses_with(cl, delete_user_cb=lambda user, cl=cl: user is not cl)
    if isinstance(out, fx.Node):
        out = graph.call_method("contiguous", (out,))  # the default layout for the caller
    graph.output(out)
    return fx.GraphModule(root, graph)
