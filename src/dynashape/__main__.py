"""The ``dynashape`` console script (also ``python -m dynashape``).

Only the standard library (and :mod:`dynashape.errors`, which uses nothing else) is imported before
the guard: the CLI itself is imported inside :func:`dynashape.errors.run_guarded`, so a Ctrl-C while
it is still importing (rich, onnx: the first tenths of a second) ends as "interrupted", exit 130,
like a Ctrl-C anywhere later, and a module of the CLI that fails to import is a loud bug (exit 3).
"""

from __future__ import annotations

from dynashape.errors import run_guarded


def main() -> int:
    """The console script: ``dynashape.cli.dispatch`` on ``sys.argv``, inside the one wrapper."""
    return run_guarded(_run_cli)


def _run_cli() -> int:
    # imported here, inside the guard, on purpose (see the module docstring)
    from dynashape.cli import dispatch

    return dispatch(None)


if __name__ == "__main__":
    raise SystemExit(main())
