"""The project's own error types: every message names the file, the place in it and the value."""

from __future__ import annotations


class CropclfError(ValueError):
    """Base class for every error cropclf raises on bad input.

    Scripts catch this type and print its message as one line, with no traceback.
    """


class AnnotationError(CropclfError):
    """An annotation file cannot be read: the message names the file, the row and the text."""


class ImageError(CropclfError):
    """An image cannot be read or decoded: the message names the path and what to do."""


class LabelError(CropclfError):
    """A label is unknown to the label map, or a head is missing from the data."""


class ConfigError(CropclfError):
    """A configuration value is out of range or unknown."""


def where(path, row=None) -> str:
    """Formats a location as ``path`` or ``path, row N`` for error messages."""
    return f"{path}" if row is None else f"{path}, {row}"
