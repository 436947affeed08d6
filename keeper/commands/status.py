"""Show the index: chain head, checkpoint, lag, event counts (--json for machines)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (default: config/dev.toml)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--no-rpc", action="store_true", help="do not ask the node for its head")


def _text(st: dict[str, Any]) -> str:
    cp = st["checkpoint"]
    lines = [
        f"chain        {st['chain_id']}  (rpc {st['rpc']})",
        f"database     {st['database']}  (schema {st['schema'] or 'none'}"
        + (
            ""
            if st["schema"] == st["schema_head"]
            else f", latest {st['schema_head']}: run keeper db upgrade"
        )
        + ")",
        f"head         {st['head'] if st['head'] is not None else 'unknown'}"
        + (f"  ({st['rpc_error']})" if st.get("rpc_error") else ""),
        "checkpoint   " + (f"block {cp['block']} {cp['hash']}" if cp else "none (not indexed yet)"),
        f"lag          {st['lag'] if st['lag'] is not None else 'unknown'} blocks",
        f"events       {st['events_total']:,}",
    ]
    lines += [f"  {name:<24}{n:>10,}" for name, n in st["events"].items()]
    if st.get("deployment_matches") is False:
        lines.append("warning      the database indexes another deployment than the deployments file")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import orjson

    from keeper.config import load_settings
    from keeper.indexer.service import status

    settings = load_settings(args.config)
    st = status(settings, query_chain=not args.no_rpc)
    if args.json:
        print(orjson.dumps(st).decode())
    else:
        print(_text(st))
    return 0
