"""Shared wiring of the liquidator tests: an in-process indexer + live book + liquidator on one deployment."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi import decode
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from keeper.chain.rpc import RpcClient
from keeper.devchain.anvil import DEV_KEYS
from keeper.executor.journal import TxJournal
from keeper.executor.keys import Signer, load_signer
from keeper.executor.liquidator import Liquidator, run_loop
from keeper.executor.txmanager import TxManager
from keeper.indexer.decode import EventDecoder
from keeper.indexer.sync import Indexer, SyncOptions
from keeper.indexer.target import IndexTarget
from keeper.indexer.writer import IndexStore
from keeper.observability.metrics import KeeperMetrics
from keeper.risk.live import LiveBook, calldata
from keeper.store.engine import make_engine
from keeper.store.migrate import upgrade

IS_LIQ = "isLiquidatable(address)"
#: anvil's public dev accounts 3 and 4: the two keepers' keys (never real keys).
KEEPER_KEYS = (
    DEV_KEYS[3],
    DEV_KEYS[4],
)


def index_db(tmp: Path, dep: Any) -> tuple[Engine, IndexTarget]:
    engine = make_engine(f"sqlite:///{tmp / 'index.db'}")
    upgrade(engine)
    return engine, IndexTarget.from_deployment(dep)


def signer_from_env(monkeypatch: Any, key: str) -> Signer:
    monkeypatch.setenv("KEEPER_TEST_KEY", key)
    return load_signer(key_env="KEEPER_TEST_KEY")


@dataclass
class Keeper:
    """One keeper: live book + liquidator + its transaction manager (its own key and journal)."""

    live: LiveBook
    liquidator: Liquidator
    txm: TxManager
    rpc: RpcClient
    metrics: KeeperMetrics
    blocks: list[int] = field(default_factory=list)


def make_keeper(
    url: str, engine: Engine, dep: Any, signer: Signer, journal_path: Path, *, alerts: Any = None
) -> Keeper:
    rpc = RpcClient([url], timeout=30)
    metrics = KeeperMetrics(CollectorRegistry())
    live = LiveBook(rpc, engine, dep, metrics=metrics, alerts=alerts)
    txm = TxManager(rpc, signer, TxJournal(f"sqlite:///{journal_path}"), "liquidation", 31337, 500 * 10**9)
    liq = Liquidator(live, txm, rpc, metrics=metrics)
    return Keeper(live, liq, txm, rpc, metrics)


async def run_indexer(url: str, engine: Engine, target: IndexTarget, stop: asyncio.Event) -> None:
    store = IndexStore(engine, target, EventDecoder.for_contracts(), 128)
    async with RpcClient([url], timeout=30) as irpc:
        ix = Indexer(irpc, store, SyncOptions(poll_interval=0.1))
        await ix.run(stop=stop)


async def index_to_head(url: str, engine: Engine, target: IndexTarget, head: int) -> None:
    """Runs the indexer until its checkpoint reaches ``head``, then stops it."""
    store = IndexStore(engine, target, EventDecoder.for_contracts(), 128)
    indexer = asyncio.create_task(run_indexer(url, engine, target, asyncio.Event()))
    while (cp := store.checkpoint()) is None or cp.number < head:
        await asyncio.sleep(0.1)
    indexer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await indexer


async def run_keeper(k: Keeper, stop: asyncio.Event, reconcile_accounts: int = 20) -> None:
    try:
        await k.live.start()
        await run_loop(
            k.live, k.liquidator, k.rpc, stop=stop, poll_interval=0.1, reconcile_every=3,
            reconcile_accounts=reconcile_accounts, on_block=k.blocks.append,
        )  # fmt: skip
    finally:
        await k.rpc.close()


async def stop_all(stop: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
    stop.set()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(t, 20)


async def liquidatable(rpc: RpcClient, exchange: str, accounts: list[str]) -> list[str]:
    res = await rpc.batch(
        [
            ("eth_call", [{"to": exchange, "data": calldata(IS_LIQ, ["address"], [a])}, "latest"])
            for a in accounts
        ]
    )
    return [a for a, r in zip(accounts, res, strict=True) if decode(["bool"], bytes.fromhex(r[2:]))[0]]
