"""The one exception type for the user's mistakes.

``dynashape.cli.run_guarded``, the one wrapper every command runs in, prints a ``DynashapeError``
as one line (``dynashape: error: ...``) and exits with its ``exit_code`` (2), with no traceback.
Anything else that escapes is a bug in dynashape and stays loud: the traceback, then one line
with the versions to report, exit 3.
"""

from __future__ import annotations


class DynashapeError(Exception):
    """Bad input or an environment problem the user can act on; the message says what to do."""

    exit_code = 2
