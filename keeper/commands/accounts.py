"""Accounts by margin ratio (lowest first): user tier, warning tier, AV, MM, ratio and, per position,
the liquidation price — from the index (positions, collateral) and the chain's current marks.

The book is the liquidator's (keeper.risk.live): positions from the database at the index checkpoint,
marks from one JSON-RPC batch of OracleHub.tryMarkPrice (and the oracle guard's readings) at the head.
Flat accounts (no position) are not listed. --at-risk lists warning tier NOTICE (ratio < 200%) or worse.
A market whose oracle the guard does not trust is shown with its contract mark and flagged.
Money in USD (collateral has 6 decimals); --json gives the raw integers (as strings where > 64 bits).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

USER_TIERS = ("novice", "junior", "senior", "professional")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (default: config/dev.toml)"
    )
    parser.add_argument("--at-risk", action="store_true", help="only warning tier NOTICE (< 200%%) or worse")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N accounts (the lowest ratios)")


async def collect(settings: Any, at_risk: bool = False, limit: int | None = None) -> dict[str, Any]:
    import asyncio

    from keeper.chain.deployments import Deployment
    from keeper.chain.rpc import RpcClient
    from keeper.indexer.service import open_database
    from keeper.risk import math as rm
    from keeper.risk.live import LiveBook

    dep = Deployment.load(settings.chain.deployments_file)
    engine = open_database(settings)
    rpc = RpcClient(settings.chain.rpc_urls, timeout=settings.chain.request_timeout)
    try:
        live = LiveBook(rpc, engine, dep, max_deviation_bps=settings.risk.max_oracle_deviation_bps)
        await live.start()
        await asyncio.to_thread(live.sync_from_db)
        quotes = await live.read_marks()
        book = live.book
        assert book is not None
        for m, q in quotes.items():  # shown even when the guard distrusts it (flagged below)
            if q.mark is not None and book.marks.get(m) != q.mark:
                book.set_mark(m, q.mark)
        rows: list[dict[str, Any]] = []
        for address, acct in book.accounts.items():
            if not acct.positions or any(m not in book.marks for m in acct.positions):
                continue
            if at_risk and acct.tier < rm.WarningTier.NOTICE:
                continue
            r = book.risk(address)
            liq = book.liquidation_prices(address)
            rows.append(
                {
                    "account": address,
                    "user_tier": USER_TIERS[min(live.user_tier.get(address, 0), 3)],
                    "warning_tier": acct.tier.name,
                    "collateral": acct.collateral,
                    "value": r.value,
                    "maintenance_margin": r.maintenance_margin,
                    "notional": r.notional,
                    "ratio_bps": r.margin_ratio_bps,
                    "liquidatable": r.is_liquidatable(book.liquidation_bps),
                    "positions": [
                        {
                            "market": live.symbols.get(m, str(m)),
                            "market_id": m,
                            "size": str(p.size),
                            "entry_price": str(p.entry_price),
                            "mark": str(book.marks[m]),
                            "liquidation_price": str(liq[m]),
                            "oracle_trusted": live.trusted.get(m, False),
                        }
                        for m, p in sorted(acct.positions.items())
                    ],
                }
            )
        rows.sort(
            key=lambda e: (int(e["value"]) * rm.BPS / max(int(e["maintenance_margin"]), 1), e["account"])
        )
        if limit is not None:
            rows = rows[: max(limit, 0)]
        return {
            "chain_id": dep.chain_id,
            "index_block": live.book_block,
            "mark_block": live.mark_block,
            "oracles": {live.symbols[m]: q.verdict.describe() for m, q in quotes.items()},
            "accounts": rows,
        }
    finally:
        await rpc.close()
        engine.dispose()


def _text(out: dict[str, Any]) -> str:
    lines = [f"index block {out['index_block']}, marks at block {out['mark_block']}"]
    lines += [f"  oracle {s}: {v}" for s, v in out["oracles"].items()]
    if not out["accounts"]:
        lines.append("no account" + (" at risk" if out.get("at_risk") else ""))
    lines.append(
        f"{'account':<42} {'user tier':<12} {'warning':<12} {'AV':>13} {'MM':>12} {'ratio':>9}  positions"
    )
    for a in out["accounts"]:
        ratio = a["ratio_bps"]
        pos = "; ".join(
            f"{p['market']} {int(p['size']) / 1e18:+.4f} @ {int(p['entry_price']) / 1e18:,.2f} "
            f"liq {int(p['liquidation_price']) / 1e18:,.2f}"
            + ("" if p["oracle_trusted"] else " (oracle untrusted)")
            for p in a["positions"]
        )
        lines.append(
            f"{a['account']:<42} {a['user_tier']:<12} {a['warning_tier']:<12} "
            f"{a['value'] / 1e6:>13,.2f} {a['maintenance_margin'] / 1e6:>12,.2f} {ratio / 100:>8.2f}%  {pos}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import asyncio

    import orjson

    from keeper.config import load_settings
    from keeper.observability.logging import configure_from_settings

    settings = load_settings(args.config)
    configure_from_settings(settings)
    out = asyncio.run(collect(settings, at_risk=args.at_risk, limit=args.limit))
    if args.json:
        print(orjson.dumps(out).decode())
    else:
        out["at_risk"] = args.at_risk
        print(_text(out))
    return 0
