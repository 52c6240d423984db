"""The one error type of declared data."""

from __future__ import annotations


class DataError(ValueError):
    """A data file, column, row or value that cannot be used; the message is one line."""
