"""Helpers for the indexer's tests and benchmarks (dev chains only): run an index to the head, drive
the contracts through every event the indexer derives state from, and read the contracts' views.

Nothing here is used by the keeper at run time.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from sqlalchemy import Engine, select

from keeper.chain.rpc import RpcClient
from keeper.indexer.decode import EventDecoder
from keeper.indexer.sync import Indexer, SyncOptions, SyncStats
from keeper.indexer.target import IndexTarget
from keeper.indexer.writer import CheckpointState, IndexStore
from keeper.store.dump import dump_tables
from keeper.store.engine import make_engine
from keeper.store.migrate import upgrade
from keeper.store.models import ACCOUNTS, MARKETS, POSITIONS, PROTOCOL_STATE
from keeper.store.testdb import throwaway_database

USDC = 10**6
WAD = 10**18
_DECODER: EventDecoder | None = None


def decoder() -> EventDecoder:
    global _DECODER
    if _DECODER is None:
        _DECODER = EventDecoder.for_contracts()
    return _DECODER


@dataclass
class IndexRun:
    checkpoint: CheckpointState
    stats: SyncStats


def open_store(db_url: str, target: IndexTarget, window: int = 128) -> tuple[Engine, IndexStore]:
    engine = make_engine(db_url)
    upgrade(engine)
    return engine, IndexStore(engine, target, decoder(), window)


def index_to_head(rpc_url: str, store: IndexStore, **options: Any) -> IndexRun:
    """Runs the indexer until the head (``keeper index --until-head``) in a fresh event loop."""
    opts = SyncOptions(reorg_window=store.window, **options)

    async def main() -> IndexRun:
        async with RpcClient(rpc_url, timeout=30.0) as rpc:
            ix = Indexer(rpc, store, opts)
            cp = await ix.run(until_head=True)
            return IndexRun(cp, ix.stats)

    return asyncio.run(main())


def fresh_dump(
    rpc_url: str, target: IndexTarget, kind: str, folder: str | Path, window: int = 128, **options: Any
) -> dict[str, Any]:
    """Dump of a fresh index of the chain as it is now (on a throwaway database of ``kind``)."""
    with throwaway_database(kind, folder) as url:
        engine, store = open_store(url, target, window)
        try:
            index_to_head(rpc_url, store, **options)
            return dump_tables(engine, target.chain_id)
        finally:
            engine.dispose()


# ------------------------------------------------------------------------------------ chain driver


class Driver:
    """Sends the transactions tests need from anvil's unlocked dev accounts (web3)."""

    def __init__(self, w3: Any, deployment: Any) -> None:
        from keeper.chain.connect import contract

        self.w3 = w3
        self.dep = deployment
        accts = list(w3.eth.accounts)
        self.admin, self.risk_admin, self.guardian = accts[0], accts[1], accts[2]
        self.traders = accts[3:9]
        self.keeper = accts[9]
        self.c = {name: contract(w3, name, deployment.contracts[name]) for name in
                  ("Exchange", "OracleHub", "LiquidityVault", "InsuranceFund")}  # fmt: skip
        self.usdc = contract(w3, "MockUSDC", deployment.collateral)
        self.markets = sorted(deployment.markets, key=lambda m: m.id)

    # -------------------------------------------------------------------------- tx building

    def tx(self, c: Any, fn: str, args: Sequence[Any], sender: str, gas: int = 1_500_000) -> dict[str, Any]:
        return {"from": sender, "to": c.address, "data": c.encode_abi(fn, args=list(args)), "gas": hex(gas)}

    def send(self, tx: dict[str, Any], *, must_succeed: bool = True) -> Any:
        h = self.w3.eth.send_transaction({**tx, "gas": int(tx["gas"], 16)})
        r = self.w3.eth.wait_for_transaction_receipt(h)
        if must_succeed and r["status"] != 1:
            raise AssertionError(f"transaction reverted: {tx}")
        return r

    def send_all(self, txs: Iterable[dict[str, Any]], *, must_succeed: bool = True) -> list[Any]:
        return [self.send(t, must_succeed=must_succeed) for t in txs]

    def feed_owner(self, feed: str) -> str:
        from keeper.chain.connect import contract

        return str(contract(self.w3, "MockAggregator", feed).functions.owner().call())

    # -------------------------------------------------------------------------- actions

    def fund_traders(self, amount: int = 100_000 * USDC) -> None:
        ex = self.c["Exchange"]
        txs = []
        for t in self.traders:
            txs.append(self.tx(self.usdc, "faucet", [t, amount], t))
            txs.append(self.tx(self.usdc, "approve", [ex.address, 2**256 - 1], t))
            txs.append(self.tx(ex, "deposit", [amount // 2], t))
            txs.append(self.tx(ex, "setEducation", [t, True], self.risk_admin))
        self.send_all(txs)

    def trade_tx(self, who: str, market: int, size_wad: int, leverage: int = 2) -> dict[str, Any]:
        return self.tx(self.c["Exchange"], "trade", [market, size_wad, leverage, 0], who)

    def refresh_tx(self, market: int, sender: str | None = None) -> dict[str, Any]:
        return self.tx(self.c["OracleHub"], "refresh", [market], sender or self.keeper, gas=300_000)

    def deposit_tx(self, who: str, amount: int) -> dict[str, Any]:
        return self.tx(self.c["Exchange"], "deposit", [amount], who)

    def set_answers(self) -> None:
        """Re-posts every feed's current answer (a new round at the current time)."""
        from keeper.chain.connect import contract

        txs = []
        for m in self.markets:
            for feed in (m.primary, m.secondary):
                agg = contract(self.w3, "MockAggregator", feed)
                answer = agg.functions.answer().call()
                txs.append(self.tx(agg, "setAnswer", [answer], self.feed_owner(feed), gas=200_000))
        self.send_all(txs)

    def set_price(self, market: int, answer: int) -> None:
        """Sets both feeds of ``market`` to ``answer`` (8 decimals): the mark is then exactly that price."""
        from keeper.chain.connect import contract

        m = next(x for x in self.markets if x.id == market)
        txs = [
            self.tx(
                contract(self.w3, "MockAggregator", f), "setAnswer", [answer], self.feed_owner(f), gas=200_000
            )
            for f in (m.primary, m.secondary)
        ]
        self.send_all([*txs, self.refresh_tx(market)])

    def move_prices(self, factor: float) -> None:
        """Sets both feeds of every market to ``factor`` x the primary's answer."""
        from keeper.chain.connect import contract

        for m in self.markets:
            answer = contract(self.w3, "MockAggregator", m.primary).functions.answer().call()
            self.set_price(m.id, int(answer * factor))

    def price_for_ratio(self, account: str, market: int, ratio: float, mmr: float = 0.02) -> int:
        """Feed answer (8 decimals) putting ``account``'s margin ratio at ``ratio`` (one position)."""
        ex = self.c["Exchange"]
        size, entry, _ = ex.functions.positionOf(account, market).call()
        c = ex.functions.collateralOf(account).call() / USDC
        s, e = size / WAD, entry / WAD
        return int((s * e - c) / (s * (1 - ratio * mmr)) * 10**8)

    def settle_funding(self) -> None:
        self.w3.provider.make_request("evm_increaseTime", [3_600])
        self.set_answers()
        self.send_all(self.tx(self.c["Exchange"], "settleFunding", [m.id], self.keeper) for m in self.markets)

    def liquidate_all(self, accounts: Iterable[str]) -> int:
        """Liquidates every liquidatable (account, market) in one batch; returns how many there were."""
        ex = self.c["Exchange"]
        pairs = []
        for a in accounts:
            if ex.functions.isLiquidatable(a).call():
                for m in self.markets:
                    if ex.functions.positionOf(a, m.id).call()[0] != 0:
                        pairs.append((a, m.id))
                        break
        if pairs:
            self.send(
                self.tx(
                    ex,
                    "liquidateBatch",
                    [[p[0] for p in pairs], [p[1] for p in pairs]],
                    self.keeper,
                    gas=30_000_000,
                )
            )
        return len(pairs)

    def admin_actions(self) -> None:
        """One of each configuration event: risk params, tier limits, caps, certification, pause, donation."""
        ex, oh, fund, vault = (
            self.c[n] for n in ("Exchange", "OracleHub", "InsuranceFund", "LiquidityVault")
        )
        params = ex.functions.params().call()
        p = list(params)
        p[0] = 7  # tradingFeeBps 6 -> 7
        m0 = self.markets[0].id
        cfg = ex.functions.market(m0).call()
        self.send(self.tx(self.usdc, "faucet", [self.admin, 1_000 * USDC], self.admin))
        self.send(self.tx(self.usdc, "approve", [fund.address, 2**256 - 1], self.admin))
        self.send(self.tx(self.usdc, "approve", [vault.address, 2**256 - 1], self.admin))
        self.send_all(
            [
                self.tx(ex, "setRiskParams", [tuple(p)], self.admin),
                self.tx(ex, "setTierLimits", [1, 6, 25_000 * USDC], self.risk_admin),
                self.tx(ex, "setMarketCaps", [m0, cfg[2] + 1, cfg[3] + 2], self.risk_admin),
                self.tx(ex, "setCertified", [self.traders[0], True], self.risk_admin),
                self.tx(oh, "setPaused", [m0, True], self.guardian),
                self.tx(oh, "setPaused", [m0, False], self.guardian),
                self.tx(fund, "donate", [100 * USDC], self.admin),
                self.tx(vault, "deposit", [200 * USDC], self.admin),
            ]
        )

    # -------------------------------------------------------------------------- views

    def mine(self, n: int = 1) -> None:
        self.w3.provider.make_request("anvil_mine", [hex(n)])

    def raw_tx(self, tx_hash: str) -> str:
        return str(self.w3.provider.make_request("eth_getRawTransactionByHash", [tx_hash])["result"])


def compare_with_views(
    engine: Engine, w3: Any, deployment: Any, chain_id: int, block: int, accounts: Iterable[str]
) -> list[str]:
    """Differences between the index and the contracts' views at ``block`` (empty when exact)."""
    from keeper.chain.connect import contract

    ex = contract(w3, "Exchange", deployment.contracts["Exchange"])
    fund = contract(w3, "InsuranceFund", deployment.contracts["InsuranceFund"])
    vault = contract(w3, "LiquidityVault", deployment.contracts["LiquidityVault"])
    oh = contract(w3, "OracleHub", deployment.contracts["OracleHub"])
    at = {"block_identifier": block}
    errors: list[str] = []

    def check(what: str, got: Any, want: Any) -> None:
        if got != want:
            errors.append(f"{what}: index {got!r} != chain {want!r}")

    with engine.connect() as conn:
        acc = {r.address: r for r in conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.chain_id == chain_id))}
        pos = {
            (r.account, r.market_id): r
            for r in conn.execute(select(POSITIONS).where(POSITIONS.c.chain_id == chain_id))
        }
        mkt = {r.market_id: r for r in conn.execute(select(MARKETS).where(MARKETS.c.chain_id == chain_id))}
        proto = conn.execute(select(PROTOCOL_STATE).where(PROTOCOL_STATE.c.chain_id == chain_id)).first()
    everyone = set(accounts) | set(acc)
    for a in sorted(everyone):
        row = acc.get(a)
        check(f"collateralOf({a})", row.collateral if row else 0, ex.functions.collateralOf(a).call(**at))
        check(f"tradeCount({a})", row.trades if row else 0, ex.functions.tradeCount(a).call(**at))
        check(f"tierOf({a})", row.tier if row else 0, ex.functions.tierOf(a).call(**at))
        check(f"educated({a})", row.educated if row else False, ex.functions.educated(a).call(**at))
        check(f"certified({a})", row.certified if row else False, ex.functions.certified(a).call(**at))
        for m in deployment.markets:
            p = pos.get((a, m.id))
            got = (p.size, p.entry_price, p.entry_funding_index) if p else (0, 0, 0)
            check(f"positionOf({a}, {m.id})", got, tuple(ex.functions.positionOf(a, m.id).call(**at)))
    for m in deployment.markets:
        r = mkt.get(m.id)
        if r is None:
            errors.append(f"market {m.id} missing from the index")
            continue
        st = ex.functions.marketState(m.id).call(**at)
        check(f"marketState({m.id}).longSize", r.long_size, st[0])
        check(f"marketState({m.id}).shortSize", r.short_size, st[1])
        check(f"marketState({m.id}).fundingIndex", r.funding_index, st[4])
        check(f"marketState({m.id}).lastFundingPeriod", r.last_funding_period, st[5])
        check(f"marketState({m.id}).lastFundingRate", r.last_funding_rate, st[6])
        check(f"marketState({m.id}).adlActive", r.adl_active, st[7])
        oi = ex.functions.openInterest(m.id).call(**at)
        check(f"openInterest({m.id}) sizes", (r.long_size, r.short_size), (oi[0], oi[1]))
        cfg = ex.functions.market(m.id).call(**at)
        check(f"market({m.id})", (r.symbol, r.mmr_bps, r.long_oi_cap, r.short_oi_cap, r.listed), tuple(cfg))
        feed = oh.functions.feed(m.id).call(**at)
        check(
            f"feed({m.id}) sources",
            (r.primary_feed, r.secondary_feed, r.heartbeat),
            (feed[0], feed[1], feed[2]),
        )
        check(f"feed({m.id}).breakerUntil", r.breaker_until or 0, feed[5])
        check(f"feed({m.id}).guardianPaused", r.paused, feed[8])
        check(f"feed({m.id}).ema", r.ema_price, feed[6])
    if proto is None:
        errors.append("protocol_state missing")
    else:
        check("InsuranceFund.balance", proto.fund_balance, fund.functions.balance().call(**at))
        check(
            "InsuranceFund.totalFeeIncome", proto.fund_fee_income, fund.functions.totalFeeIncome().call(**at)
        )
        check(
            "InsuranceFund.totalPenaltyIncome",
            proto.fund_penalty_income,
            fund.functions.totalPenaltyIncome().call(**at),
        )
        check(
            "InsuranceFund.totalDonations", proto.fund_donations, fund.functions.totalDonations().call(**at)
        )
        check("InsuranceFund.totalPayouts", proto.fund_payouts, fund.functions.totalPayouts().call(**at))
        check("Exchange.totalBadDebt", proto.total_bad_debt, ex.functions.totalBadDebt().call(**at))
        check(
            "Exchange.totalSocializedLoss",
            proto.total_socialized_loss,
            ex.functions.totalSocializedLoss().call(**at),
        )
        check(
            "LiquidityVault.totalSocializedLoss",
            proto.vault_socialized_loss,
            vault.functions.totalSocializedLoss().call(**at),
        )
    return errors


class LiveIndexer:
    """One long-lived :class:`Indexer` on an event loop in a background thread, stepped from a test.

    Unlike :func:`index_to_head` (a new indexer each time: the start-up path), :meth:`sync` goes through
    the running indexer's own tip check, as ``keeper index`` does between polls.
    """

    def __init__(self, rpc_url: str, store: IndexStore, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.rpc = RpcClient(rpc_url, timeout=30.0)
        self.indexer = Indexer(self.rpc, store, SyncOptions(reorg_window=store.window, **options))

    def call(self, coro: Any, timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sync(self) -> tuple[int, int]:
        return self.call(self.indexer.sync_once())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.call(self.rpc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def __enter__(self) -> LiveIndexer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FaultProxy:
    """A JSON-RPC proxy to ``upstream`` that injects faults, on its own event loop thread.

    ``eth_getLogs`` over more than ``max_span`` blocks is refused ("exceed maximum block range: N");
    the others take the next fault of ``schedule``: ``ok``, ``alchemy`` / ``infura`` / ``quicknode`` /
    ``wide`` / ``code`` (range errors in those providers' words, suggesting half the span), ``413``,
    ``timeout`` (answers after 1.5 s), ``slow`` (answers right, after 1 s), ``truncated`` (half the
    body), ``malformed``, ``not-a-list``; ``trace`` records each ``eth_getLogs`` as it arrives and as its
    answer goes out: ``("in" | "out", from, to, fault)``.
    Every ``fail_every``-th other request gets an HTTP 503; ``delay`` slows every answer, ``jitter``
    every ``eth_getLogs`` answer by a further U(0, jitter) seconds (a remote provider's uneven latency);
    ``strip_timestamps`` removes ``blockTimestamp`` from logs. ``rate_limit`` is the share of requests
    answered HTTP 429 with ``Retry-After: retry_after`` (seeded, so runs repeat). :meth:`kill` closes
    the listening socket and every open connection (connection refused, as a dead node), :meth:`revive`
    listens again on the same port. ``counts`` tallies what was injected and ``served`` what was
    answered.
    """

    def __init__(
        self,
        upstream: str,
        max_span: int = 10**9,
        schedule: list[str] | None = None,
        fail_every: int = 0,
        delay: float = 0.0,
        strip_timestamps: bool = False,
        rate_limit: float = 0.0,
        retry_after: str = "0.05",
        seed: int = 1,
        jitter: float = 0.0,
    ) -> None:
        self.upstream = upstream
        self.rate_limit = rate_limit
        self.retry_after = retry_after
        self.rng = random.Random(seed)
        self.served = 0
        self.port = 0
        self.strip_timestamps = strip_timestamps  # logs without blockTimestamp, as many nodes answer
        self.delay = delay  # added to every answer
        self.jitter = jitter
        self.max_span = max_span
        self.schedule = list(schedule or [])  # faults for the successive in-limit eth_getLogs calls
        self.fail_every = fail_every  # HTTP 503 on every n-th other request
        self.counts: dict[str, int] = {}
        self.trace: list[tuple[str, int, int, str]] = []
        self.n = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _start(self) -> str:
        self.session = aiohttp.ClientSession()
        await self._listen()
        return f"http://127.0.0.1:{self.port}"

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.alive = True

    async def _stop(self) -> None:
        if self.alive:
            await self.runner.cleanup()
        await self.session.close()

    def kill(self) -> None:
        """The node dies: connections refused until :meth:`revive`."""

        async def down() -> None:
            self.alive = False
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.count("killed")

    def revive(self) -> None:
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)
        self.count("revived")

    async def forward(self, body: bytes) -> bytes:
        async with self.session.post(
            self.upstream, data=body, headers={"Content-Type": "application/json"}
        ) as r:
            return await r.read()

    def error(self, rid: Any, code: int, message: str, data: Any = None) -> web.Response:
        err: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            err["data"] = data
        return web.Response(
            body=orjson.dumps({"jsonrpc": "2.0", "id": rid, "error": err}), content_type="application/json"
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        payload = orjson.loads(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.rate_limit and self.rng.random() < self.rate_limit:
            self.count("429")
            return web.Response(
                status=429, text="Too Many Requests", headers={"Retry-After": self.retry_after}
            )
        self.served += 1
        if isinstance(payload, dict) and payload.get("method") == "eth_getLogs":
            f = payload["params"][0]
            a, b = int(f["fromBlock"], 16), int(f["toBlock"], 16)
            rid = payload["id"]
            span = b - a + 1
            fault = "maxrange" if span > self.max_span else (self.schedule.pop(0) if self.schedule else "ok")
            self.count(fault)
            self.trace.append(("in", a, b, fault))
            if self.jitter:
                await asyncio.sleep(self.rng.uniform(0.0, self.jitter))
            try:
                return await self._get_logs(body, rid, a, b, fault)
            finally:
                self.trace.append(("out", a, b, fault))
        self.n += 1
        if self.fail_every and self.n % self.fail_every == 0:
            self.count("503")
            return web.Response(status=503, text="upstream busy")
        return web.Response(body=await self.forward(body), content_type="application/json")

    async def _get_logs(self, body: bytes, rid: Any, a: int, b: int, fault: str) -> web.StreamResponse:
        """The answer to one eth_getLogs of blocks a..b, with ``fault``."""
        span = b - a + 1
        half = hex(a + max(1, span // 2) - 1)
        if fault == "alchemy":
            return self.error(
                rid,
                -32602,
                "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block "
                f"range. Based on your parameters, this block range should work: [{hex(a)}, {half}]",
            )
        if fault == "infura":
            return self.error(
                rid,
                -32005,
                "query returned more than 10000 results",
                {"from": hex(a), "to": half, "limit": 10000},
            )
        if fault == "maxrange":
            return self.error(rid, -32000, f"exceed maximum block range: {self.max_span}")
        if fault == "quicknode":
            return self.error(rid, -32614, f"eth_getLogs is limited to a {self.max_span:,} range")
        if fault == "wide":
            return self.error(rid, -32000, "block range is too wide")
        if fault == "413":
            return web.Response(status=413, text="Payload Too Large")
        if fault == "code":
            return self.error(rid, -32005, "rate or size limited")
        if fault == "timeout":
            await asyncio.sleep(1.5)  # the client's timeout is 1 s
            return web.Response(body=await self.forward(body), content_type="application/json")
        if fault == "slow":
            await asyncio.sleep(1.0)
        if fault == "truncated":
            full = await self.forward(body)
            return web.Response(body=full[: max(1, len(full) // 2)], content_type="application/json")
        if fault == "malformed":
            return web.Response(
                body=b'{"jsonrpc":"2.0","id":' + str(rid).encode() + b',"result":[{"addr',
                content_type="application/json",
            )
        if fault == "not-a-list":
            return web.Response(
                body=orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": {"oops": 1}}),
                content_type="application/json",
            )
        answer = await self.forward(body)
        if self.strip_timestamps:
            reply = orjson.loads(answer)
            for lg in reply.get("result") or []:
                lg.pop("blockTimestamp", None)
            answer = orjson.dumps(reply)
        return web.Response(body=answer, content_type="application/json")
