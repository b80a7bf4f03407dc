"""Distillation from the ANN during spiking-flow fine-tuning — with the ANN rebuilt from the SNN.

A converted SNN's weights are the ANN's, rescaled per channel (spec §5), so running its graph
with every neuron replaced by the ReLU it came from, every stage in its ANN form and one time
step (:class:`AnnPass`) is the source ANN in normalised units: its output is the ANN's output
(in ANN units), and the activation a^l it passes at neuron layer l is the ANN's ReLU output
divided by λ^l — the rate the neuron should fire at. So fine-tuning can learn from its teacher
without the ANN's file: the teacher is a frozen copy of the SNN it starts from.

Losses (all on the same scale as the task's own loss, averaged over pixels):

* :func:`distill_loss` — segmentation: KL(softmax(teacher / τ) ‖ softmax(student / τ)) · τ² on
  logits in ANN units (student = I_in^L / T); denoising: |student − teacher| (MAE);
* :func:`layer_loss` — mean over neuron layers of (I_out^l / T − a^l)², the accumulated rate of
  each layer against its teacher activation (normalised units): its gradient reaches each layer
  through the straight-through gate of the flow pass.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import fx, nn

from sjunet.neurons import StaticInputSynapse, is_neuron
from sjunet.snn import record_of

LOSSES = ("label", "distill", "both")


class AnnPass(fx.Interpreter):
    """The SNN's graph as its source ANN (module docstring); ``acts`` holds a^l per neuron path.

    ``caps`` maps a neuron path to its ReLU cap in normalised units (ReLU6 / Hardtanh(0, a):
    a / λ), from the conversion record."""

    def __init__(self, snn: fx.GraphModule, caps: dict[str, float] | None = None) -> None:
        super().__init__(snn)
        self.caps = caps or {}
        self.acts: dict[str, torch.Tensor] = {}

    def call_module(self, target, args, kwargs):
        m = self.fetch_attr(target)
        if is_neuron(m):
            a = m.activation(*args)  # ReLU, the leaky ReLU / PReLU of a signed neuron, a Σ-Δ neuron's f or product
            if target in self.caps:
                a = a.clamp(max=self.caps[target])
            self.acts[target] = a
            return a
        if isinstance(m, StaticInputSynapse):
            return m.layer(args[0])
        if hasattr(m, "flow"):  # sjunet stages in their ANN form: max-pool, interpolation, padding, gains
            return m.flow(*args, T=1, **kwargs)
        return super().call_module(target, args, kwargs)  # convolutions, pooling, cat (single-step mode)


def caps_of(snn: nn.Module) -> dict[str, float]:
    """Neuron path -> ReLU cap in normalised units, from the SNN's conversion record."""
    rec = record_of(snn)
    neurons = (rec.conversion.neurons if rec is not None else None) or {}
    return {p: float(v["cap"]) / float(v["lambda"]) for p, v in neurons.items() if v.get("cap")}


class Teacher:
    """A frozen copy of ``snn`` run as its source ANN (:class:`AnnPass`)."""

    def __init__(self, snn: fx.GraphModule) -> None:
        self.net = copy.deepcopy(snn).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.caps = caps_of(snn)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from spikingjelly.activation_based import functional

        functional.set_step_mode(self.net, "s")
        p = AnnPass(self.net, self.caps)
        out = p.run(x)
        functional.reset_net(self.net)
        return out, p.acts

    def to(self, device) -> "Teacher":
        self.net.to(device)
        return self


def distill_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """The student's output (I_in^L / T, ANN units) against the teacher's (module docstring)."""
    if kind == "segmentation":
        t = F.log_softmax(teacher / tau, dim=1)
        s = F.log_softmax(student / tau, dim=1)
        return (t.exp() * (t - s)).sum(1).mean() * tau * tau
    return F.l1_loss(student, teacher)


def layer_loss(rates: dict[str, torch.Tensor], acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over neuron layers of the mean squared difference between rate and teacher activation."""
    terms = [F.mse_loss(r, acts[name]) for name, r in rates.items() if name in acts]
    if not terms:
        raise ValueError("no neuron layer to compare with the teacher")
    return torch.stack(terms).mean()
