"""What lets torch.fx trace past what it cannot (issue 26; used by :mod:`.tracing`): proxies that
answer with concrete values of the example input — ``len()``, ``np.array(x.shape)``, ``int(shape[1])``,
a shape's items, ``t.data`` — and take item assignment (``mask[:, h, w] = 1``), and, while tracing,
patches: ``torch.jit.isinstance(proxy, torch.Tensor)`` is true (MONAI's ``UpCat``), tensor factories
sized by shapes (``torch.zeros(x.size(0), c, *x.shape[2:])``) become graph nodes, einops takes proxies
(their shapes concrete, batch size aside). :func:`reachable_modules` tells a module the forward creates
while it runs (installed as a fresh submodule by the tracer) from one the model holds outside its
module tree. Each concrete value is recorded by the tracer (``Trace.specialised``) and the size rule
holds only where the traced graph is the same (:mod:`.sizes`)."""
from __future__ import annotations

import contextlib
import functools
import operator
import sys
from typing import Callable

import torch
from torch import fx, nn


def proxy_setitem(self, key, value) -> None:
    self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


class Concrete:
    """What a proxy answers with a concrete value of the example input: ``len()`` (``len(x.shape)`` in
    MONAI) and numpy's ``np.array(x.shape)`` (SwinUNETR's size check: the shape as concrete ints,
    recorded as specialised, :meth:`sjunet.graph.tracing._Tracer.concrete_array`). numpy's other array hooks are absent
    (an ``fx.Proxy`` would answer every attribute with a proxy, which numpy rejects)."""

    def __len__(self) -> int:
        return len(self.tracer._evaluate(self.node))

    def __array__(self, dtype=None, copy=None):
        return self.tracer.concrete_array(self.node, dtype)

    def __int__(self) -> int:
        return self.tracer.concrete_int(self.node, "int")

    def __index__(self) -> int:
        return self.tracer.concrete_int(self.node, "index")

    def __float__(self) -> float:  # ``np.ceil(h / w)`` and friends
        return self.tracer.concrete_int(self.node, "float")

    #: ``t[idx] = v`` (SwinUNETR fills its attention mask so): an in-place ``operator.setitem`` node
    __setitem__ = proxy_setitem

    def __iter__(self):
        """A shape's items (``*x.shape[2:]``) as proxies, one per axis of the example input; a tensor's
        slices along its first dimension (unpacking)."""
        value = self.tracer._evaluate(self.node) if self.tracer.example is not None else None
        if isinstance(value, torch.Tensor) and value.dim() > 0:  # ``q, k, v = t.permute(2, …)``: along dim 0
            return iter([self[i] for i in range(value.shape[0])])
        if not isinstance(value, (tuple, list, torch.Size)):
            return super().__iter__()
        return iter([self[i] for i in range(len(value))])


class ShapeProxy(Concrete, fx.Proxy):
    """A proxy with concrete answers on the example input (:class:`Concrete`)."""

    def __getattr__(self, k: str) -> "fx.proxy.Attribute":
        if k.startswith("__array"):
            raise AttributeError(k)
        if k == "data":  # `t.data`: the same values without autograd history (MONAI's ResNet shortcut)
            return self
        if k == "ndim" and self.tracer.example is not None:  # a tensor's rank does not depend on H, W (einops asks)
            # (``device`` and ``dtype`` stay proxies: a factory given ``device=x.device`` then follows the
            # input, on ``meta`` too; what it builds from shapes alone is folded into a buffer later)
            value = self.tracer._evaluate(self.node)
            if isinstance(value, torch.Tensor):
                return getattr(value, k)
        return ShapeAttribute(self, k)


class ShapeAttribute(Concrete, fx.proxy.Attribute):
    def __getattr__(self, k: str) -> "fx.proxy.Attribute":
        if k.startswith("__array"):
            raise AttributeError(k)
        return super().__getattr__(k)


def _jit_isinstance(original: Callable) -> Callable:
    def isinstance_(obj, target_type):
        if isinstance(obj, fx.Proxy) and target_type is torch.Tensor:
            return True
        return original(obj, target_type)
    return isinstance_


@contextlib.contextmanager
def patched_jit_isinstance():
    original = torch.jit.isinstance
    torch.jit.isinstance = _jit_isinstance(original)
    try:
        yield
    finally:
        torch.jit.isinstance = original


#: tensor factories whose sizes may come from shapes (``torch.zeros(x.size(0), c, *x.shape[2:])`` in MONAI's
#: ResNet shortcut): called with proxies, they become graph nodes instead of failing in torch's argument parser
_FACTORIES = ("zeros", "ones", "full", "empty", "arange")


@contextlib.contextmanager
def patched_factories():
    patched = {name: getattr(torch, name) for name in _FACTORIES}
    originals = {name: getattr(fn, "sjunet_original", fn) for name, fn in patched.items()}  # nested: torch's own

    def wrap(fn):
        @functools.wraps(fn)
        def factory(*args, **kwargs):
            proxies = []
            fx.node.map_aggregate((args, kwargs), lambda a: proxies.append(a) if isinstance(a, fx.Proxy) else None)
            if proxies:
                return proxies[0].tracer.create_proxy("call_function", fn, args, kwargs)
            return fn(*args, **kwargs)
        factory.sjunet_original = fn
        return factory

    try:
        for name, fn in originals.items():
            setattr(torch, name, wrap(fn))
        yield
    finally:
        for name, fn in patched.items():
            setattr(torch, name, fn)


_PROXY_BACKEND = None


@contextlib.contextmanager
def einops_sees_proxies():
    """While active, einops (``rearrange`` in SwinUNETR) takes proxies as torch tensors whose shape is
    the example input's (concrete ints, specialised and recorded: :meth:`sjunet.graph.tracing._Tracer.concrete_shape`), so
    it traces into the view/permute/reshape it stands for. Nothing happens unless einops is loaded."""
    global _PROXY_BACKEND
    backends = sys.modules.get("einops._backends")
    if backends is None or not hasattr(backends, "TorchBackend"):
        yield
        return
    if _PROXY_BACKEND is None:
        class _ProxyBackend(backends.TorchBackend):
            def __init__(self):  # not TorchBackend's: it imports torch._dynamo (seconds on a cold start)
                self.torch = torch

            def is_appropriate_type(self, tensor):
                return isinstance(tensor, fx.Proxy)

            def shape(self, x):
                return x.tracer.concrete_shape(x.node)

        _PROXY_BACKEND = _ProxyBackend()
    saved = dict(backends._type2backend)
    try:
        for t in (fx.Proxy, ShapeProxy, ShapeAttribute):
            backends._type2backend[t] = _PROXY_BACKEND
        yield
    finally:
        backends._type2backend.clear()
        backends._type2backend.update(saved)


def reachable_modules(root: nn.Module, limit: int = 1_000_000) -> set[int]:
    """The ids of every module reachable from ``root``'s attributes before tracing (through its
    module tree, and through plain lists, tuples, dicts and sets): a module the tracer meets that is
    not among them was created while ``forward`` ran."""
    seen: set[int] = set()
    found: set[int] = set()
    stack: list = [root]
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.add(id(obj))
            stack.extend(vars(obj).values())
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
    return found
