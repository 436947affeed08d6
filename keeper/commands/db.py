"""Database schema: upgrade to the latest migration, or show the current revision."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (default: config/dev.toml)"
    )
    sub = parser.add_subparsers(dest="db_command", metavar="<action>", required=True)
    up = sub.add_parser("upgrade", help="apply the migrations (to the latest unless a revision is given)")
    up.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    sub.add_parser("current", help="print the database's schema revision")


def run(args: argparse.Namespace) -> int:
    from keeper.config import load_settings
    from keeper.store.engine import make_engine, redact
    from keeper.store.migrate import current_revision, head_revision, upgrade

    settings = load_settings(args.config)
    engine = make_engine(settings.database.url, busy_timeout_ms=settings.database.busy_timeout_ms)
    try:
        if args.db_command == "upgrade":
            before = current_revision(engine)
            upgrade(engine, args.revision)
            after = current_revision(engine)
            what = "already at" if before == after else f"upgraded from {before or 'empty'} to"
            print(f"{redact(settings.database.url)}: {what} {after}")
        else:
            rev = current_revision(engine)
            head = head_revision()
            note = " (latest)" if rev == head else f" (latest is {head}: run keeper db upgrade)"
            print(f"{rev or 'none'}{note}")
    finally:
        engine.dispose()
    return 0
