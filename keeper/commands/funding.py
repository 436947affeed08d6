"""Funding settlement (and ADL and the insurance-fund watch): show each market's funding, settle when due.

Per market: the keeper's current and predicted hourly rate, its cumulative index (replayed from the index
with the keeper's own math, checked against the contract's), the contract's own figures, and the next
due time in chain time (the latest block's timestamp). Without --once it keeps running on a schedule keyed
to chain time: settles every market as soon as its period is due (own key: funding.key_env or
funding.keystore), steps ADL when a market's traders' profit exceeds the trigger share of the vault
(funding.adl_key_env), alerts operators on socialized losses. The index (``keeper index``) must run
alongside for the keeper's figures, ADL ranking and the fund watch.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("keeper.funding")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (default: config/dev.toml)"
    )
    parser.add_argument("--once", action="store_true", help="one pass: show, settle what is due, exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="show what is due, send nothing (no key needed)"
    )
    parser.add_argument("--json", action="store_true", help="--once: one JSON object on stdout")


def _pct(rate_wad: int) -> str:
    return f"{rate_wad / 10**16:+.5f}%/h"


_WAD_FIELDS = ("last_rate", "predicted_rate", "index", "keeper_index", "keeper_predicted_rate",
               "keeper_predicted_index")  # fmt: skip


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    """Rates and indexes are 18-decimal integers beyond JSON's safe range: exact decimal strings."""
    return {k: (str(v) if k in _WAD_FIELDS and v is not None else v) for k, v in row.items()}


def _when(ts: int, now: int) -> str:
    iso = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
    d = ts - now
    return f"{iso}Z ({'in ' + str(d) + ' s' if d > 0 else 'due ' + str(-d) + ' s ago'})"


def _table(rows: list[dict[str, Any]], now: int) -> str:
    lines = []
    for r in rows:
        lines.append(
            f"{r['symbol']:<6} rate now {_pct(r['last_rate'])}  predicted {_pct(r['predicted_rate'])}  "
            f"index {r['index']}  next due {_when(r['due_at'], now)}"
            + ("" if r.get("keeper_matches", True) else "  KEEPER/CONTRACT MISMATCH")
            + (f"  [{r['action']}]" if r.get("action") else "")
        )
    return "\n".join(lines)


async def _main(args: argparse.Namespace, settings: Any) -> int:
    import orjson

    from keeper.chain.deployments import Deployment
    from keeper.chain.rpc import RpcClient
    from keeper.executor.funding import ExchangeViews, FundingSettler, load_figures, update_figures
    from keeper.indexer.service import open_database

    dep = Deployment.load(settings.chain.deployments_file)
    fs = settings.funding
    engine = open_database(settings)
    rpc = RpcClient(settings.chain.rpc_urls, timeout=settings.chain.request_timeout)
    try:
        views = ExchangeViews(rpc, dep.address("Exchange"), dep.address("OracleHub"))
        markets = [m.id for m in sorted(dep.markets, key=lambda m: m.id)]
        symbols = {m.id: m.symbol for m in dep.markets}
        txm = None if args.dry_run else _manager(settings, rpc, engine, dep.chain_id, "funding")
        settler = FundingSettler(views, txm, markets, lead_seconds=fs.lead_seconds, dry_run=args.dry_run)

        async def show(action: dict[int, str]) -> tuple[list[dict[str, Any]], int]:
            block, now = await views.head()
            params = await views.params()
            update_figures(engine, dep.chain_id, chain_time=now, block_number=block, params=params)
            figs = {f["market_id"]: f for f in load_figures(engine, dep.chain_id)}
            rows = []
            for m in markets:
                st = await views.market_state(m)
                rate, due = await views.next_funding(m)
                f = figs.get(m)
                rows.append(
                    {
                        "market": m,
                        "symbol": symbols[m],
                        "last_rate": st.last_funding_rate,
                        "predicted_rate": rate,
                        "index": st.funding_index,
                        "due_at": due,
                        "last_period": st.last_funding_period,
                        "keeper_index": f["funding_index"] if f else None,
                        "keeper_predicted_rate": f["predicted_rate_wad"] if f else None,
                        "keeper_predicted_index": f["predicted_index"] if f else None,
                        "keeper_matches": bool(f["matches"]) if f else True,
                        "action": action.get(m, ""),
                    }
                )
            return rows, now

        if args.once:
            results = await settler.run_once()
            for r in results:
                if r.handle is not None and txm is not None:
                    for _ in range(120):
                        await txm.tick()
                        if r.handle.done():
                            break
                        await asyncio.sleep(0.5)
            rows, now = await show({r.market_id: r.action for r in results})
            if args.json:
                print(orjson.dumps({"chain_time": now, "markets": [_json_row(r) for r in rows]}).decode())
            else:
                print(f"chain time {_when(now, now).split(' (')[0]}")
                print(_table(rows, now))
            return 0 if all(r.action != "error" for r in results) else 1
        return await _loop(settings, dep, engine, rpc, views, settler, markets, show)
    finally:
        await rpc.close()
        engine.dispose()


def _manager(settings: Any, rpc: Any, engine: Any, chain_id: int, lane: str) -> Any:
    from keeper.executor.maintenance import manager

    return manager(settings, rpc, engine, chain_id, lane)


async def _loop(
    settings: Any, dep: Any, engine: Any, rpc: Any, views: Any, settler: Any, markets: list[int], show: Any
) -> int:
    import signal

    from keeper.executor.maintenance import run_maintenance

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def show_and_log(action: dict[int, str]) -> None:
        rows, now = await show(action)
        log.info("funding figures at t=%d:\n%s", now, _table(rows, now))

    await run_maintenance(settings, dep, engine, rpc, stop, settler=settler, show=show_and_log)
    return 0


def run(args: argparse.Namespace) -> int:
    from keeper.config import load_settings
    from keeper.observability.logging import configure_from_settings

    settings = load_settings(args.config)
    configure_from_settings(settings)
    return asyncio.run(_main(args, settings))
