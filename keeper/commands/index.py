"""Index the DEX's contract events into the database (follows the chain; --until-head backfills and exits).

Reads the deployments file (chain.deployments_file) for the contracts and the start block, the RPC
node from chain.rpc_urls (chain.ws_url, when set, only wakes the poller on new heads), and writes to
database.url (SQLite by default, or postgresql://...). Reorgs up to indexer.reorg_window blocks deep
are rolled back and re-indexed; a deeper one stops the indexer with an error, after the deep_reorg
operator alert (alerts.webhooks, alerts.email). Blocks are indexed once indexer.confirmations deep.
Stop with Ctrl-C (or SIGTERM): the range being written is committed first, and the next run resumes
from there.

Following the chain, it serves Prometheus metrics on metrics.host:metrics.port + metrics.path (when
metrics.enabled; a port that cannot be bound is an error at start): keeper_index_lag_blocks,
keeper_events_indexed_total (this run's), keeper_events_indexed_per_second, keeper_reorgs_total{depth},
keeper_rpc_errors_total{kind}, and keeper_head_age_seconds (now - the latest head's timestamp, read
with each poll). --until-head serves none: a job that exits has nothing to scrape.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from keeper.errors import KeeperError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (default: config/dev.toml)"
    )
    parser.add_argument(
        "--until-head",
        action="store_true",
        help="backfill up to the current head, then exit (no metrics server)",
    )
    parser.add_argument(
        "--from-block", type=int, metavar="N",
        help="first block of a fresh index (default: indexer.start_block, else the deployment block)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines")


def run(args: argparse.Namespace) -> int:
    from keeper.config import load_settings
    from keeper.indexer.service import run_index
    from keeper.observability.logging import configure_from_settings

    settings = load_settings(args.config)
    configure_from_settings(settings)
    try:
        run_index(
            settings, until_head=args.until_head, start_block=args.from_block, progress=not args.no_progress
        )
    except KeeperError as exc:
        from keeper.alerts.dispatcher import deep_reorg_alert

        alert = deep_reorg_alert(exc)
        if alert is not None and settings.alerts.enabled:
            asyncio.run(_send(settings, alert))
        raise
    return 0


async def _send(settings: Any, alert: Any) -> None:
    """Sends one operator alert through the configured sinks (no user contacts: nothing to warn)."""
    from keeper.alerts.dispatcher import AlertDispatcher

    dispatcher = AlertDispatcher.from_settings(settings.alerts)
    try:
        await asyncio.wait_for(dispatcher.alert(alert), 60)
    except TimeoutError:
        pass  # the indexer's error is the one to report; the sinks logged their failures
    finally:
        await dispatcher.close()
