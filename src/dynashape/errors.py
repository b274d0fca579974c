"""The one exception type for the user's mistakes, and the one wrapper every command ends in.

:func:`run_guarded` is what both entry points (the ``dynashape`` console script, i.e.
``dynashape.__main__.main``, and ``dynashape.cli.main`` for in-process callers) run a command in.
It turns whatever ends the command into an exit code and at most one line:

* a ``DynashapeError``: ``dynashape: error: ...`` and its ``exit_code`` (2), no traceback;
* an optional dependency that is not installed: the same, with the ``pip install`` that adds it;
* Ctrl-C (also while a lazy import runs): ``dynashape: interrupted``, 130;
* the reader of stdout went away (``| head``): nothing, 141;
* anything else is a bug in dynashape and stays loud: the traceback, then one line with the
  versions to report, exit 3.

Only the standard library is imported here, so that the entry point can guard the CLI's own
imports too (a Ctrl-C in the first tenths of a second is "interrupted" like one later).
"""

from __future__ import annotations

import os
import platform
import sys
import traceback
from collections.abc import Callable

from dynashape._version import __version__

EXIT_OK = 0
EXIT_FINDINGS = 1  # findings (check), failed shapes (verify, doctor), a refused or failed build
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # as a shell reports a command killed by SIGPIPE

# optional dependencies a command imports lazily -> the extra that installs them
_EXTRAS = {"torch": "torch", "onnxscript": "torch", "tensorrt": "tensorrt",
           "cuda": "tensorrt", "matplotlib": "plot"}


class DynashapeError(Exception):
    """Bad input or an environment problem the user can act on; the message says what to do."""

    exit_code = EXIT_USER_ERROR


def run_guarded(command: Callable[[], int]) -> int:
    """Run a command; turn what escapes it into an exit code and at most one line (bugs: a traceback)."""
    try:
        return command()
    except BaseException as exc:  # the one place where every exception ends
        if isinstance(exc, SystemExit):
            raise
        if _interrupted(exc):
            print("dynashape: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(exc, BrokenPipeError):  # `dynashape check --json | head`: the reader left
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        if isinstance(exc, DynashapeError):
            print(f"dynashape: error: {exc}", file=sys.stderr)
            return exc.exit_code
        missing = _missing_extra(exc)
        if missing:
            print(f"dynashape: error: {missing}", file=sys.stderr)
            return EXIT_USER_ERROR
        if not isinstance(exc, Exception):
            raise  # GeneratorExit and the like are not ours to swallow
        traceback.print_exc()
        print(f"dynashape: internal error: this is a bug in dynashape {__version__} (Python "
              f"{platform.python_version()}, {platform.system()}); please report it to the dynashape "
              "maintainers with the command line and the traceback above", file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured output)
        pass


def _interrupted(exc: BaseException) -> bool:
    """A KeyboardInterrupt, or an exception raised while one was handled (Ctrl-C during a lazy
    `import onnxruntime` can surface as an ImportError whose __context__ is the interrupt)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        todo += [cur.__cause__, cur.__context__]
    return False


def _missing_extra(exc: BaseException) -> str | None:
    """One line for an optional dependency that is not installed (torch, TensorRT, matplotlib)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    extra = _EXTRAS.get(top)
    if extra is None:
        return None
    return f"this needs {top}, which is not installed: pip install 'dynashape[{extra}]'"
