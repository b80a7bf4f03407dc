"""Building a model with the network switched off: sjunet downloads nothing, and a file never
makes it reach the network.

:func:`no_network` is held while an architecture is built from a checkpoint or from ``--arch``
(:mod:`sjunet.models.checkpoint`): the model hubs' own offline switches are set
(``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``, ``huggingface_hub``'s constant when it is loaded),
and any attempt to open a connection or resolve a name (``socket.socket.connect``,
``socket.create_connection``, ``socket.getaddrinfo``) raises :class:`NetworkRefused` at once —
one line naming what the model wanted — instead of a download or a minute-long stall.
Everything is restored afterwards.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import Iterator

from sjunet.io import ArtifactError

_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class NetworkRefused(ArtifactError):
    """Building a model tried to reach the network."""


@contextlib.contextmanager
def no_network(what: str = "building the model") -> Iterator[None]:
    """Within this block, reaching the network raises :class:`NetworkRefused` (module docstring)."""
    def refuse(*args, **kwargs):
        target = next((a for a in args if isinstance(a, (tuple, str))), "")
        raise NetworkRefused(f"{what} tried to reach the network{f' ({target!r})' if target else ''}; sjunet never "
                             "downloads anything — build the model from local code and weights only (e.g. "
                             "encoder_weights null, no hub names)")

    saved_env = {k: os.environ.get(k) for k in _ENV}
    saved = [(socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
             (socket, "getaddrinfo")]
    originals = [getattr(obj, name) for obj, name in saved]
    hub = sys.modules.get("huggingface_hub.constants")
    hub_offline = getattr(hub, "HF_HUB_OFFLINE", None) if hub is not None else None
    try:
        os.environ.update(_ENV)
        if hub is not None:
            hub.HF_HUB_OFFLINE = True
        for obj, name in saved:
            setattr(obj, name, refuse)
        yield
    finally:
        for (obj, name), fn in zip(saved, originals):
            setattr(obj, name, fn)
        if hub is not None:
            hub.HF_HUB_OFFLINE = hub_offline
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


__all__ = ["NetworkRefused", "no_network"]
