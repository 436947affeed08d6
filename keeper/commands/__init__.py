"""Subcommands of the ``keeper`` CLI, one module per subcommand.

To add a subcommand ``foo``, create ``keeper/commands/foo.py`` with:

* a module docstring (its first line is the one-line help shown by ``keeper --help``);
* ``add_arguments(parser: argparse.ArgumentParser) -> None``;
* ``run(args: argparse.Namespace) -> int`` (the process exit code).

Modules are discovered automatically (``foo_bar.py`` becomes ``keeper foo-bar``); there is no list to
edit. Keep heavy imports (web3, sqlalchemy, ...) inside ``run`` so that ``keeper --help`` stays fast.
Raise :class:`keeper.errors.KeeperError` for problems the user can fix: the CLI prints it as one line.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from typing import Protocol, cast


class Command(Protocol):
    """What the CLI needs from a subcommand module."""

    __doc__: str | None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def discover() -> dict[str, Command]:
    """Registry of subcommand name -> module, for every module in this package (sorted by name)."""
    registry: dict[str, Command] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if not (hasattr(module, "add_arguments") and hasattr(module, "run")):
            raise TypeError(f"{module.__name__} must define add_arguments(parser) and run(args)")
        registry[info.name.replace("_", "-")] = cast(Command, module)
    return registry
