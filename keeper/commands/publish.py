"""Publish insurance-fund snapshots: chain state read at one block, each new head and at least every 10 s.

Reads the views of InsuranceFund, Exchange and OracleHub at one block (one JSON-RPC batch), stamps the
figures with that block's number, hash and time, adds the 24-hour income and payouts from the index,
and writes them to the database (fund_snapshots, market_snapshots, hourly whale_snapshots).
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


def run(args: argparse.Namespace) -> int:
    from keeper.config import load_settings
    from keeper.observability.logging import configure_from_settings
    from keeper.publisher.service import run_publisher

    settings = load_settings(args.config)
    configure_from_settings(settings)
    run_publisher(settings)
    return 0
