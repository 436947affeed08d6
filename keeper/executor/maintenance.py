"""Maintenance jobs of the keeper, on the chain-time schedule: funding settlement (its own lane),
the keeper's funding figures, ADL (its own lane) and the insurance-fund watch. Used by ``keeper
funding`` and ``keeper run``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("keeper.maintenance")


def manager(settings: Any, rpc: Any, engine: Any, chain_id: int, lane: str, send_guard: Any = None) -> Any:
    """The transaction manager of the ``funding`` or ``adl`` lane (each its own signing key)."""
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
        rpc, signer, journal, lane, chain_id, int(fs.max_fee_cap_gwei * 10**9), fs.replace_after_blocks,
        fs.bump_pct, send_guard=send_guard,
    )  # fmt: skip


async def run_maintenance(
    settings: Any,
    dep: Any,
    engine: Any,
    rpc: Any,
    stop: asyncio.Event,
    *,
    settler: Any = None,
    show: Callable[[dict[int, str]], Awaitable[Any]] | None = None,
    send_guard: Any = None,
    dispatcher: Any = None,
) -> None:
    """Runs the jobs until ``stop`` is set. ``dispatcher``: the caller's alert dispatcher (default: one
    of its own, closed at the end)."""
    from keeper.alerts.dispatcher import AlertDispatcher
    from keeper.errors import KeeperError
    from keeper.executor.adl import AdlExecutor
    from keeper.executor.funding import ExchangeViews, FundingSettler, update_figures
    from keeper.executor.fundwatch import FundWatch
    from keeper.observability.metrics import METRICS
    from keeper.schedule import ChainClock, ChainTick, KeeperSchedule

    fs = settings.funding
    views = ExchangeViews(rpc, dep.address("Exchange"), dep.address("OracleHub"))
    markets = [m.id for m in sorted(dep.markets, key=lambda m: m.id)]
    if settler is None:
        txm = manager(settings, rpc, engine, dep.chain_id, "funding", send_guard)
        await txm.recover()
        settler = FundingSettler(views, txm, markets, lead_seconds=fs.lead_seconds)
    settler.metrics = METRICS
    sched = KeeperSchedule(ChainClock(rpc))
    own_dispatcher = dispatcher is None
    if dispatcher is None:
        dispatcher = AlertDispatcher.from_settings(settings.alerts)

    async def funding_job(tick: ChainTick) -> None:
        for r in await settler.run_once():
            if r.action in ("sent", "settled_by_other", "error"):
                log.info("funding market %d: %s %s", r.market_id, r.action, r.detail)

    async def figures_job(tick: ChainTick) -> None:
        if show is not None:
            await show({})
            return
        block, now = await views.head()
        update_figures(engine, dep.chain_id, chain_time=now, block_number=block, params=await views.params())

    sched.add("funding", funding_job, poll=fs.poll_interval)
    sched.add("funding_figures", figures_job, every=300, poll=max(fs.poll_interval, 5.0))
    if fs.adl_enabled and not settler.dry_run:
        try:
            adl_txm = manager(settings, rpc, engine, dep.chain_id, "adl", send_guard)
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
    sched.start()
    try:
        await stop.wait()
    finally:
        await sched.shutdown()
        if own_dispatcher:
            await dispatcher.close()
