"""Errors a user can act on: printed as one line, never as a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_USAGE = 2  # argparse's exit code for bad usage; also used for KeeperError
EXIT_INTERRUPTED = 130


class KeeperError(Exception):
    """A problem with input, config or environment, stated in one line that says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def exit_code(run: Callable[[], int | None]) -> int:
    """Runs a command's body: a :class:`KeeperError` becomes one ``error:`` line on stderr and exit 2,
    Ctrl-C exit 130 (the ``keeper`` command and the bench/ scripts)."""
    try:
        return int(run() or 0)
    except KeeperError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
