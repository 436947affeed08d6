"""``keeper --help`` and the parser of every subcommand load without the heavy libraries: those are
imported by a subcommand's ``run`` (keeper/commands/__init__.py), so the CLI answers at once."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("sqlalchemy", "sqlmodel", "web3", "aiohttp", "eth_abi", "structlog", "prometheus_client")


def test_the_cli_parser_loads_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from keeper.cli import build_parser\n"
        "build_parser()\n"
        f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported while building the CLI's parser: {out.stdout.strip()}"


def test_keeper_help_lists_the_subcommands() -> None:
    out = subprocess.run([sys.executable, "-m", "keeper.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for command in ("index", "status", "run", "serve", "liquidate", "db"):
        assert command in out.stdout
