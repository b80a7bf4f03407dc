"""Errors shared by the modules of the conversion (a leaf module: it imports nothing of sjunet)."""
from __future__ import annotations


class UnsupportedGraphError(ValueError):
    """The ANN contains an operation that has no faithful spiking counterpart here."""
