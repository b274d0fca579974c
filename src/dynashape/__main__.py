"""The ``dynashape`` entry point (also ``python -m dynashape``).

Only the standard library is imported before the guard: a Ctrl-C while the CLI itself is still
importing (rich, onnx: the first few tenths of a second) ends as "interrupted", exit 130, like a
Ctrl-C anywhere later, instead of Python's traceback.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from dynashape.cli import main as cli_main
    except KeyboardInterrupt:
        print("dynashape: interrupted", file=sys.stderr)
        return 130
    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
