"""Print the keeper's version."""

from __future__ import annotations

import argparse

from keeper import __version__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``keeper version`` takes no arguments."""


def run(args: argparse.Namespace) -> int:
    print(f"keeper {__version__}")
    return 0
