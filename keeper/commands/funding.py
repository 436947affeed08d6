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
                print(orjson.dumps({"chain_time": now, "markets": rows}).decode())
            else:
                print(f"chain time {_when(now, now).split(' (')[0]}")
                print(_table(rows, now))
            return 0 if all(r.action != "error" for r in results) else 1
        return await _loop(settings, dep, engine, rpc, views, settler, markets, show)
    finally:
        await rpc.close()
        engine.dispose()


def _manager(settings: Any, rpc: Any, engine: Any, chain_id: int, lane: str) -> Any:
    from keeper.executor.journal import TxJournal
    from keeper.executor.keys import load_signer
    from keeper.executor.txmanager import TxManager

    fs = settings.funding
    if lane == "funding":
        signer = load_signer(fs.keystore, fs.password_file, fs.key_env)
    else:
        signer = load_signer(fs.adl_keystore, fs.adl_password_file, fs.adl_key_env)
    journal = TxJournal(fs.journal_url or engine)
    return TxManager(
        rpc,
        signer,
        journal,
        lane,
        chain_id,
        int(fs.max_fee_cap_gwei * 10**9),
        fs.replace_after_blocks,
        fs.bump_pct,
    )


async def _loop(
    settings: Any, dep: Any, engine: Any, rpc: Any, views: Any, settler: Any, markets: list[int], show: Any
) -> int:
    from keeper.alerts.dispatcher import AlertDispatcher
    from keeper.errors import KeeperError
    from keeper.executor.adl import AdlExecutor
    from keeper.executor.fundwatch import FundWatch
    from keeper.observability.metrics import METRICS
    from keeper.schedule import ChainClock, ChainTick, KeeperSchedule

    fs = settings.funding
    settler.metrics = METRICS
    sched = KeeperSchedule(ChainClock(rpc))
    dispatcher = AlertDispatcher.from_settings(settings.alerts)

    async def funding_job(tick: ChainTick) -> None:
        for r in await settler.run_once():
            if r.action in ("sent", "settled_by_other", "error"):
                log.info("funding market %d: %s %s", r.market_id, r.action, r.detail)

    async def figures_job(tick: ChainTick) -> None:
        rows, now = await show({})
        log.info("funding figures at t=%d:\n%s", now, _table(rows, now))

    sched.add("funding", funding_job, poll=fs.poll_interval)
    sched.add("funding_figures", figures_job, every=300, poll=max(fs.poll_interval, 5.0))
    if fs.adl_enabled and not settler.dry_run:
        try:
            adl_txm = _manager(settings, rpc, engine, dep.chain_id, "adl")
        except KeeperError as exc:
            log.warning("ADL disabled: %s", exc)
        else:
            adl = AdlExecutor(views, adl_txm, engine, dep.chain_id, markets, fs.adl_size_margin_bps)

            async def adl_job(tick: ChainTick) -> None:
                await adl.run_once()

            sched.add("adl", adl_job, poll=fs.poll_interval)
    if fs.fund_watch:
        watch = FundWatch(engine, dep.chain_id, dispatcher)

        async def watch_job(tick: ChainTick) -> None:
            await watch.run_once()

        sched.add("fund_watch", watch_job, poll=fs.poll_interval)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sched.start()
    try:
        await stop.wait()
    finally:
        await sched.shutdown()
        await dispatcher.close()
    return 0


def run(args: argparse.Namespace) -> int:
    from keeper.config import load_settings
    from keeper.observability.logging import configure_from_settings

    settings = load_settings(args.config)
    configure_from_settings(settings)
    return asyncio.run(_main(args, settings))
