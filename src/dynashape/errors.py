"""The one exception type for the user's mistakes.

The CLI prints a ``DynashapeError`` as one line and exits 2, with no traceback. Anything
else that escapes is a bug in dynashape and stays loud.
"""

from __future__ import annotations


class DynashapeError(Exception):
    """Bad input or an environment problem the user can act on; the message says what to do."""

    exit_code = 2
