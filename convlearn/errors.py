"""User-facing errors.

A :class:`ConvlearnError` means the user asked for something that cannot work (a bad file, an
image too small for the model, a misaligned target). ``train.py`` prints its message as one line
and exits non-zero instead of showing a traceback; anything else is a bug and keeps its traceback.
"""

import os
import sys
from collections.abc import Callable


class ConvlearnError(Exception):
    """A mistake in the user's config or data, explained in one line."""


def full_error_wanted() -> bool:
    """Whether the user set ``HYDRA_FULL_ERROR=1`` (Hydra's switch) to see tracebacks instead of one line."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def script_exit_code(action: Callable[[], object]) -> int:
    """Run a script's ``action``: 0 when it succeeds; 1 after printing a user mistake as one line
    (its traceback with ``HYDRA_FULL_ERROR=1``), as ``train.py`` does."""
    try:
        action()
    except ConvlearnError as err:
        if full_error_wanted():
            raise
        print(f"convlearn: error: {err}", file=sys.stderr)
        return 1
    return 0
