"""Entry point of the ``keeper`` command (see :mod:`keeper.commands` for the subcommands)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from keeper import __version__
from keeper.commands import discover
from keeper.errors import EXIT_USAGE, exit_code

__all__ = ["EXIT_USAGE", "build_parser", "main"]


def _summary(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keeper",
        description="Zanbara Keeper: indexer, risk engine, executor and publisher for the Zanbara perp DEX.",
    )
    parser.add_argument("--version", action="version", version=f"keeper {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, command in discover().items():
        summary = _summary(command.__doc__)
        sub = subparsers.add_parser(name, help=summary, description=summary)
        command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return exit_code(lambda: args._run(args))


if __name__ == "__main__":
    sys.exit(main())
