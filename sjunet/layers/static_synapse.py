"""The static input synapse: the first (analog) synaptic layer under static coding (spec §3)."""
from __future__ import annotations

import torch
from spikingjelly.activation_based import base
from torch import nn


class StaticInputSynapse(base.MemoryModule):
    """The first (analog) synaptic layer under static coding: computed once per image, not T times.

    Multi-step: if the input sequence is an ``expand`` of one image (stride 0 along T), the layer
    runs on ``x_seq[0]`` and the result is expanded; otherwise every step is computed. Single-step:
    the output for the same input tensor object is cached until ``reset()``.
    """

    def __init__(self, layer: nn.Module, step_mode: str = "s") -> None:
        super().__init__()
        self.layer = layer
        self.step_mode = step_mode
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def supported_step_mode(self):
        return ("s", "m")

    def reset(self) -> None:
        self._cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "m":
            if x.stride(0) != 0:  # not a static sequence: compute every step
                return self.layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])
            root = x._base if x._base is not None else x
            y = self._cached(root, lambda: self.layer(x[0]))
            return y.unsqueeze(0).expand(x.shape[0], *y.shape)
        return self._cached(x, lambda: self.layer(x))

    def _cached(self, key: torch.Tensor, compute) -> torch.Tensor:
        # The cache holds a reference to ``key``, so identity cannot be confused with a new
        # tensor at a reused address; it is cleared by reset() (functional.reset_net).
        if torch.is_grad_enabled():
            return compute()
        if self._cache is None or self._cache[0] is not key:
            self._cache = (key, compute())
        return self._cache[1]
