"""Saving figures (atomically, format from the suffix) and shared labels: the leaf that
:mod:`sjunet.plots.paper`, :mod:`sjunet.plots.curves` and :mod:`sjunet.plots.predictions` draw on, so
none of them imports another at load."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (before pyplot; never opens a window)
import matplotlib.pyplot as plt  # noqa: E402

from sjunet.io import atomic_path  # noqa: E402

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
NORM_LABELS = {"layer": "layer-wise", "connection": "connection-wise"}


def _format_of(path: Path) -> str:
    return _FORMATS.get(path.suffix.lower(), "png")


def save_figure(fig, output: str | os.PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` atomically to ``output`` (format from the suffix: png/svg/pdf; png otherwise)
    and close it."""
    output = Path(output)
    try:
        with atomic_path(output) as tmp:
            # the temp file's suffix is '.tmp': give the format explicitly
            fig.savefig(tmp, format=_format_of(output), dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return output
