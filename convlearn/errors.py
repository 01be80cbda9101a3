"""User-facing errors.

A :class:`ConvlearnError` means the user asked for something that cannot work (a bad file, an
image too small for the model, a misaligned target). ``train.py`` prints its message as one line
and exits non-zero instead of showing a traceback; anything else is a bug and keeps its traceback.
"""

import os


class ConvlearnError(Exception):
    """A mistake in the user's config or data, explained in one line."""


def full_error_wanted() -> bool:
    """Whether the user set ``HYDRA_FULL_ERROR=1`` (Hydra's switch) to see tracebacks instead of one line."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"
