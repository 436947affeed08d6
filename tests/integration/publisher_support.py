"""Helpers of the publisher/API tests: a dev chain with an index, the publisher, the server in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from keeper.api.app import ServerConfig, make_app
from keeper.chain.rpc import RpcClient
from keeper.devchain.anvil import free_port
from keeper.indexer.target import IndexTarget
from keeper.indexer.testing import Driver, index_to_head, open_store
from keeper.publisher.snapshot import Publisher

T = TypeVar("T")
USDC = 10**6
WAD = 10**18


def size_for(d: Driver, market: int, notional_usd: float) -> int:
    mark = d.c["OracleHub"].functions.markPrice(market).call()
    return int(notional_usd * WAD * WAD / mark)


def stage_liquidations(d: Driver, also: Sequence[str] = (), min_full: int = 1) -> None:
    """Leveraged accounts, then two price drops: partial liquidations, full ones, bad debt, fund payouts.

    ``also``: more accounts offered to the full-liquidation sweep (e.g. a simulated market's traders);
    ``min_full``: how many full liquidations the sweep must make at least."""
    ex = d.c["Exchange"]
    t0, t1, t2, t3 = d.traders[:4]
    txs = []
    for t, deposit in ((t0, 1_000), (t1, 1_000), (t2, 1_000), (t3, 50_000)):
        txs += [
            d.tx(d.usdc, "faucet", [t, deposit * USDC], t),
            d.tx(d.usdc, "approve", [ex.address, 2**256 - 1], t),
            d.tx(ex, "deposit", [deposit * USDC], t),
            d.tx(ex, "setEducation", [t, True], d.risk_admin),
        ]
    txs += [d.tx(ex, "setCertified", [t, True], d.risk_admin) for t in (t0, t1)]  # 20x
    d.send_all(txs)
    d.move_prices(1.0)  # both feeds equal: the mark is the feeds' price, whatever the EMA
    d.send_all(
        [
            d.trade_tx(t0, 1, size_for(d, 1, 18_000), 20),
            d.trade_tx(t1, 0, size_for(d, 0, 18_500), 20),
            d.trade_tx(t2, 2, size_for(d, 2, 2_900), 3),
            d.trade_tx(t3, 1, -size_for(d, 1, 2_000), 2),
        ]
    )
    for t, m in ((t0, 1), (t1, 0)):  # margin ratio 105%: partial liquidations
        d.set_price(m, d.price_for_ratio(t, m, 1.05))
    assert d.liquidate_all([t0, t1]) == 2
    d.move_prices(0.6)  # everything levered is under water: full liquidations with bad debt
    assert d.liquidate_all([*d.traders, *also]) >= min_full


def _in_thread(fn: Callable[[], T]) -> T:
    """Runs ``fn`` in a worker thread (its own event loop): callable while Playwright's sync API runs one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


@dataclass
class Stack:
    """A deployed dev chain, an index of it in ``db_url`` and a publisher writing to the same database."""

    deployed: Any
    db_url: str

    def __post_init__(self) -> None:
        self.url = self.deployed.anvil.url
        self.dep = self.deployed.deployment
        self.w3 = self.deployed.w3
        self.target = IndexTarget.from_deployment(self.dep)
        self.engine, self.store = open_store(self.db_url, self.target)
        self.driver = Driver(self.w3, self.dep)

    def index(self) -> int:
        return _in_thread(lambda: index_to_head(self.url, self.store).checkpoint.number)

    def publish(self, **kw: Any) -> int:
        async def main() -> int:
            async with RpcClient(self.url) as rpc:
                return await Publisher(self.engine, rpc, self.dep, **kw).publish_once()

        return _in_thread(lambda: asyncio.run(main()))

    def close(self) -> None:
        self.engine.dispose()


class ServerThread:
    """The public app on a free port, in its own thread and event loop (with an RpcClient for explain)."""

    def __init__(self, stack: Stack, *, rpc_url: str | None = None, **cfg: Any) -> None:
        self.stack = stack
        self.rpc_url = rpc_url or stack.url  # the node explain asks
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        defaults = dict(chain_id=stack.dep.chain_id, exchange=stack.dep.address("Exchange"),
                        fund_address=stack.dep.address("InsuranceFund"), refresh_interval=0.2,
                        stale_after=3600.0, max_snapshot_age=3600.0, poll=1.0)  # fmt: skip
        self.cfg = ServerConfig(**{**defaults, **cfg})
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - surfaced by start()
            self.error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with RpcClient(self.rpc_url) as rpc:
            runner = web.AppRunner(make_app(self.stack.engine, self.cfg, rpc), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(15)
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
