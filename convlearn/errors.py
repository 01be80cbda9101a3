"""User-facing errors.

A :class:`ConvlearnError` means the user asked for something that cannot work (a bad file, an
image too small for the model, a misaligned target). ``train.py`` prints its message as one line
and exits non-zero instead of showing a traceback; anything else is a bug and keeps its traceback.
"""


class ConvlearnError(Exception):
    """A mistake in the user's config or data, explained in one line."""
