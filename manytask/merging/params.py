"""Declared, strictly validated merge parameters: the package-wide :mod:`manytask.registry`
declarations.

Each merge method declares its parameters as :class:`Param` objects: global ones (one value for
the merge) and per-model ones (one value per input model). Unknown names (with a "did you
mean"), wrong types (also a ``TypeError``) and out-of-range values are one-line errors naming
the parameter and where it was given: mergekit silently accepts ``densty`` and
``density: 1.5``; we do not.
"""

from __future__ import annotations

from ..registry import REQUIRED, Param, RegistryError, resolve

__all__ = ["REQUIRED", "Param", "RegistryError", "resolve"]
