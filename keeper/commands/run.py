"""Run the whole keeper in one process: indexer, liquidator, funding/ADL, publisher, public page.

Each part also runs alone (keeper index, keeper liquidate, keeper serve --publish); --no-<part> leaves
one out. SIGINT/SIGTERM stop it cleanly: the indexer's range in flight is committed or rolled back
whole, and in-flight transactions stay tracked in the journal for the next start. The signing key comes
from executor.keystore + executor.password_file, or on a dev chain from the environment variable named
by executor.key_env (default KEEPER_PRIVATE_KEY); funding and ADL sign with their own keys
(funding.key_env KEEPER_FUNDING_KEY, funding.adl_key_env KEEPER_ADL_KEY) so that a stuck funding
transaction never holds up a liquidation. Several nodes on one PostgreSQL database elect a leader.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (default: config/dev.toml)"
    )
    for part in ("index", "liquidate", "funding", "publish", "serve"):
        parser.add_argument(f"--no-{part}", action="store_true", help=f"do not run the {part} loop")


def run(args: argparse.Namespace) -> int:
    from keeper.config import load_settings
    from keeper.observability.logging import configure_from_settings
    from keeper.runner import Parts
    from keeper.runner import run as run_keeper

    settings = load_settings(args.config)
    configure_from_settings(settings)
    parts = Parts(
        index=not args.no_index,
        liquidate=not args.no_liquidate,
        funding=not args.no_funding,
        publish=not args.no_publish,
        serve=not args.no_serve,
    )
    return run_keeper(settings, parts)
