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
        declutter(fig)
        with atomic_path(output) as tmp:
            # the temp file's suffix is '.tmp': give the format explicitly
            fig.savefig(tmp, format=_format_of(output), dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return output


# ----------------------------------------------------------------------------- readable text
#: texts overlapping by less than this many pixels (each way) do not count as overlapping
OVERLAP_TOLERANCE_PX = 1.0


def drawn_texts(fig) -> list:
    """``[(text artist, window bbox)]`` of every non-empty text drawn for ``fig`` (the layout engine
    runs first, as when saving): titles, axis and tick labels, legends, annotations — exactly what
    lands in the PNG: each text is recorded as the Agg renderer draws it (a text that is hidden,
    empty, outside its axes or a tick outside the view is not drawn, so not recorded)."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    seen: dict[int, object] = {}
    original = Text.draw

    def draw(self, r):
        if self.get_visible() and str(self.get_text()).strip():
            seen.setdefault(id(self), self)
        return original(self, r)

    Text.draw = draw
    try:
        fig.draw(renderer)
    finally:
        Text.draw = original
    return [(t, t.get_window_extent(renderer)) for t in seen.values()]


def _overlap(a, b, tol: float = OVERLAP_TOLERANCE_PX) -> bool:
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tol) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tol)


def text_overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of drawn texts of ``fig`` whose bounding boxes intersect (:func:`drawn_texts`)."""
    texts = drawn_texts(fig)
    return [(a.get_text(), b.get_text()) for i, (a, ba) in enumerate(texts) for b, bb in texts[i + 1:]
            if _overlap(ba, bb)]


#: offsets (points) tried, in order, for a point label that overlaps something
_LABEL_OFFSETS = ((3, 3), (3, -9), (-14, 3), (-14, -9), (5, -3), (-18, -3), (0, 7), (0, -12))


def _thin(axis, drawn_minor: bool) -> None:
    """Fewer tick labels on ``axis``: drop the minor ones first, then every other major tick."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, LogLocator, MaxNLocator, NullFormatter

    if drawn_minor:
        axis.set_minor_formatter(NullFormatter())
        return
    loc, fmt = axis.get_major_locator(), axis.get_major_formatter()
    ticks = list(axis.get_majorticklocs())
    if isinstance(loc, FixedLocator):
        axis.set_major_locator(FixedLocator(list(loc.locs)[::2]))
        if isinstance(fmt, FixedFormatter):
            axis.set_major_formatter(FixedFormatter(list(fmt.seq)[::2]))
    elif isinstance(loc, LogLocator):
        axis.set_major_locator(LogLocator(base=loc._base, numticks=max(2, len(ticks) // 2)))
    else:
        axis.set_major_locator(MaxNLocator(nbins=max(2, len(ticks) // 2 - 1)))


def declutter(fig, passes: int = 6) -> None:
    """Make every drawn text of ``fig`` readable: tick labels of an axis that collide are thinned
    (minor labels dropped first, then every other major tick) until they do not; point labels
    (annotations) that overlap anything move to a free offset or, when none is free, are hidden.
    Titles, axis labels and legends are never touched."""
    from matplotlib.text import Annotation

    for _ in range(passes):
        texts = drawn_texts(fig)
        renderer = fig.canvas.get_renderer()
        changed = False
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                minor = {id(t) for t in axis.get_minorticklabels()}
                own = minor | {id(t) for t in axis.get_majorticklabels()}
                labs = sorted(((t, b) for t, b in texts if id(t) in own), key=lambda tb: (tb[1].x0, tb[1].y0))
                if any(_overlap(a, b) for i, (_, a) in enumerate(labs) for _, b in labs[i + 1:]):
                    _thin(axis, any(id(t) in minor for t, _ in labs))
                    changed = True
        if changed:  # tick labels moved: measure again before placing the point labels
            continue
        fixed = [(t, b) for t, b in texts if not isinstance(t, Annotation)]
        placed: list = []
        for t, b in texts:
            if not isinstance(t, Annotation):
                continue
            others = fixed + placed
            if not any(_overlap(b, o) for _, o in others):
                placed.append((t, b))
                continue
            changed = True
            for off in _LABEL_OFFSETS:
                t.xyann = off
                nb = t.get_window_extent(renderer)
                if not any(_overlap(nb, o) for _, o in others):
                    placed.append((t, nb))
                    break
            else:
                t.set_visible(False)
        if not changed:
            return
