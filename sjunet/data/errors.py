"""The error every dataset loader raises for bad directories, files and options (its own module so
that :mod:`sjunet.data.common` and :mod:`sjunet.data.imageio` can both raise it)."""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset directory is missing, empty or not in the expected layout, a file in it cannot be
    read as expected, or an option is wrong. The message is one line naming what is wrong and
    where (the directory or file), and what to do about it."""
