"""Figures (``sjunet plot``): matplotlib with the Agg backend, every file written atomically.

The parts, lowest first:

* :mod:`.figures` — saving a figure (format from the suffix) and shared labels;
* :mod:`.paper` — the paper's Figure 3 (:func:`activation_vs_rate`, :func:`activation_rate_points`,
  :func:`fit_line`) and calibration :func:`histograms`;
* :mod:`.curves` — metric against T and against energy, from result files;
* :mod:`.predictions` — the paper's Figures 4/5 (input, label and each system's output);
* :mod:`.dispatch` — :func:`plot`, the library form of ``sjunet plot <kind>``.

**A new figure** is a function in the module of its kind (returning the numbers it draws), a kind in
:data:`sjunet.plots.dispatch.KINDS` with its branch of :func:`plot`, and a subcommand of ``sjunet plot``
(:mod:`sjunet.cli.plot`), with its tests in ``tests/plots/``.
"""
from sjunet.plots.dispatch import KINDS, plot
from sjunet.plots.figures import save_figure
from sjunet.plots.paper import activation_rate_points, activation_vs_rate, fit_line, histograms

__all__ = ["KINDS", "activation_rate_points", "activation_vs_rate", "fit_line", "histograms", "plot", "save_figure"]
