"""``sjunet`` command line: one click group, one module per verb family, each a thin layer over the
library function of the same name.

The verbs (:mod:`sjunet.cli.train`, :mod:`~sjunet.cli.calibrate`, :mod:`~sjunet.cli.convert`,
:mod:`~sjunet.cli.evaluate`, :mod:`~sjunet.cli.finetune`, :mod:`~sjunet.cli.energy`,
:mod:`~sjunet.cli.plot`, :mod:`~sjunet.cli.bench`, :mod:`~sjunet.cli.demo`) are registered on
:func:`main` here; what they share is :mod:`sjunet.cli.options`. **A new verb** is a module here with
its ``click.command``, one ``main.add_command`` line below, and its tests in ``tests/cli/``.

The CLI owns paths, loading, printing and exit codes; the library works on objects. Errors a user
can fix (a wrong file, a bad option, an unsupported model, incompatible data) end the command with
one line and exit code 2; a run that fails (a diverged loss) with one line and exit code 1.
"""
from __future__ import annotations

import signal
import sys

import click

from sjunet.cli.bench import bench
from sjunet.cli.calibrate import calibrate
from sjunet.cli.convert import convert
from sjunet.cli.demo import demo
from sjunet.cli.energy import energy
from sjunet.cli.evaluate import evaluate
from sjunet.cli.finetune import finetune
from sjunet.cli.plot import plot
from sjunet.cli.train import train


def _sigterm(signum, frame):  # a terminated run unwinds: temporaries removed, locks released
    sys.exit(128 + signum)


@click.group()
@click.version_option(package_name="sjunet")
def main() -> None:
    """sjunet: train a U-Net, calibrate, convert it into a Spiking-UNet, simulate and evaluate it."""
    signal.signal(signal.SIGTERM, _sigterm)


for _verb in (train, calibrate, convert, evaluate, finetune, demo, plot, energy, bench):
    main.add_command(_verb)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
