"""Serve the public page and JSON API (read-only, from the database); metrics on an internal port.

The page (/), the rule book (/rules), large holders (/whales), accounts (/account/<address>), the JSON
API (/api/..., OpenAPI at /api/openapi.json) and /healthz, on server.host:server.port (default
127.0.0.1:8080). Everything is served from the database that ``keeper index`` and the publisher fill;
--publish also runs the insurance-fund publisher in this process.
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
    parser.add_argument("--host", help="listen address (default: server.host)")
    parser.add_argument("--port", type=int, help="listen port (default: server.port)")
    parser.add_argument(
        "--publish", action="store_true", help="also run the snapshot publisher in this process"
    )


def run(args: argparse.Namespace) -> int:
    from keeper.config import load_settings
    from keeper.observability.logging import configure_from_settings
    from keeper.publisher.service import run_server

    settings = load_settings(args.config)
    configure_from_settings(settings)
    run_server(settings, publish=args.publish, host=args.host, port=args.port)
    return 0
