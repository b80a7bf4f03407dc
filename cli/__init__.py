"""The ``sjunet`` command line (installed as ``sjunet.cli``): :mod:`sjunet.cli.main` holds the click
group, :mod:`sjunet.cli.options` what the verbs share, and each verb family is its own module
(``train``, ``calibrate``, ``convert``, ``evaluate``, ``finetune``, ``energy``, ``plot``, ``bench``,
``demo``). A new verb is a module here registered in :mod:`sjunet.cli.main`; tests: ``tests/cli/``."""
