"""The version, in a module of its own: ``errors.py`` names it in the bug line and is imported by the
package's ``__init__``, so it cannot import the package for it."""

from __future__ import annotations

__version__ = "0.1.0"
