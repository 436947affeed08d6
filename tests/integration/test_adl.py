"""ADL and the insurance-fund watch on a real anvil, with a small vault (deployed with little liquidity).

(c) a profit surge (ETH +30 % in steps spaced past the circuit breaker's window) puts traders' profit in
the market above 45 % of the vault: the keeper ranks the profitable positions by adl_score from the index,
reduces the top-ranked ones, each step sized to get back under 40 %, until AdlStateChanged(active=false).
(fund watch) a bad debt larger than the insurance fund: a fund_shortfall operator alert at once.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import Engine, select

from keeper.alerts.dispatcher import AlertDispatcher, AlertKind
from keeper.alerts.sinks import DeliveryResult
from keeper.chain.rpc import RpcClient
from keeper.devchain.anvil import DEV_KEYS, Anvil
from keeper.executor.adl import AdlExecutor, adl_allowed, rank_positions, required_realization
from keeper.executor.funding import ExchangeViews
from keeper.executor.fundwatch import FundWatch, shortfalls
from keeper.executor.journal import TxJournal
from keeper.executor.txmanager import TxManager
from keeper.indexer.target import IndexTarget
from keeper.indexer.testing import Driver, LiveIndexer, open_store
from keeper.risk import math as rm
from keeper.store.models import ADL_EVENTS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_funding import GWEI, WAD, signer  # noqa: E402

pytestmark = pytest.mark.integration
ADL_KEY = 6
USDC = 10**6


@dataclass
class Env:
    anvil: Anvil
    d: Driver
    engine: Engine
    live: LiveIndexer
    path: Path

    def req(self, method: str, params: list[Any]) -> Any:
        r = self.d.w3.provider.make_request(method, params)
        assert "error" not in r, r
        return r.get("result")

    def now(self) -> int:
        return int(self.d.w3.eth.get_block("latest")["timestamp"])


def _env(anvil: Anvil, tmp_path: Path, **deploy_kw: Any) -> Iterator[Env]:
    from keeper.chain.connect import connect
    from keeper.devchain.deploy import deploy

    w3 = connect(anvil.url, 31337)
    dep = deploy(
        w3,
        DEV_KEYS[0],
        Account.from_key(DEV_KEYS[1]).address,
        Account.from_key(DEV_KEYS[2]).address,
        **deploy_kw,
    )
    path = dep.save(tmp_path / "deployments.json")
    d = Driver(w3, dep)
    d.fund_traders()
    engine, store = open_store(f"sqlite:///{tmp_path / 'keeper.db'}", IndexTarget.from_file(path))
    live = LiveIndexer(anvil.url, store)
    try:
        yield Env(anvil, d, engine, live, path)
    finally:
        live.close()
        engine.dispose()


@pytest.fixture
def small_vault(anvil: Anvil, tmp_path: Path) -> Iterator[Env]:
    yield from _env(anvil, tmp_path, vault_seed_usd=20_000)


@pytest.fixture
def empty_fund(anvil: Anvil, tmp_path: Path) -> Iterator[Env]:
    yield from _env(anvil, tmp_path, fund_seed_usd=0)


def _ramp(e: Env, market: int, factor: float, steps: int) -> None:
    """Moves both feeds by ``factor`` in ``steps`` equal steps, 6 minutes apart (no circuit breaker)."""
    from keeper.chain.connect import contract

    m = next(x for x in e.d.markets if x.id == market)
    start = contract(e.d.w3, "MockAggregator", m.primary).functions.answer().call()
    for i in range(1, steps + 1):
        e.req("evm_setNextBlockTimestamp", [e.now() + 360])
        e.d.set_answers()  # keep the other markets' feeds fresh too
        e.d.set_price(market, int(start * (1 + (factor - 1) * i / steps)))


def test_profit_surge_triggers_adl_of_the_top_ranked(small_vault: Env) -> None:
    e = small_vault
    ex = e.d.c["Exchange"]
    t = e.d.traders
    for who in t[:4]:
        e.d.send(e.d.tx(ex, "setCertified", [who, True], e.d.risk_admin))
    # ETH longs of different leverage/size (different adl scores) and one short (loses on the surge)
    e.d.send_all(
        [
            e.d.trade_tx(t[0], 1, 10 * WAD, leverage=10),
            e.d.trade_tx(t[1], 1, 8 * WAD, leverage=5),
            e.d.trade_tx(t[2], 1, 5 * WAD, leverage=2),
            e.d.trade_tx(t[3], 1, -2 * WAD, leverage=2),
        ]
    )
    # different account values: trader 0 keeps little collateral (high notional/AV: ranked first)
    for who, keep in ((t[0], 3_000), (t[1], 10_000)):
        c = ex.functions.collateralOf(who).call()
        e.d.send(e.d.tx(ex, "withdraw", [c - keep * USDC], who))
    _ramp(e, 1, 1.30, 5)
    pnl, assets, active = ex.functions.adlState(1).call()
    assert pnl * 10_000 > 4_500 * assets, f"surge must trigger ADL: {pnl} vs {assets}"
    e.live.sync()

    # the contract's own view of the ranking: score from positionOf/accountValue at the mark
    mark = e.d.c["OracleHub"].functions.markPrice(1).call()
    truth = []
    for who in t[:4]:
        size, entry, _ = ex.functions.positionOf(who, 1).call()
        if rm.pnl(size, entry, mark) > 0:
            truth.append((rm.adl_score(size, entry, mark, ex.functions.accountValue(who).call()), who))
    truth.sort(reverse=True)
    ranked = rank_positions(e.engine, 31337, 1, {1: mark})
    assert [c.account for c in ranked] == [w for _, w in truth], "index ranking == contract's"
    assert [c.score for c in ranked] == [s for s, _ in truth]
    need = required_realization(pnl, assets, 4_000)

    async def main() -> AdlExecutor:
        rpc = RpcClient(e.anvil.url, timeout=30.0)
        views = ExchangeViews(rpc, ex.address, e.d.c["OracleHub"].address)
        txm = TxManager(rpc, signer(ADL_KEY), TxJournal(e.engine), "adl", 31337, 100 * GWEI)
        adl = AdlExecutor(views, txm, e.engine, 31337, [0, 1, 2])
        params = await views.params()
        for _ in range(10):
            await adl.run_once(params)
            e.live.sync()  # the keeper's index follows (ranking of the next step)
            p, a, act = await views.adl_state(1)
            if adl.idle() and not adl_allowed(p, a, act, params):
                break
        await rpc.close()
        return adl

    adl = asyncio.run(asyncio.wait_for(main(), 120))
    pnl2, assets2, active2 = ex.functions.adlState(1).call()
    assert not active2 and pnl2 * 10_000 <= 4_000 * assets2, "back under 40 %"
    steps = adl.steps
    assert steps and all(s.outcome == "mined" for s in steps)
    assert steps[0].account == truth[0][1], "the top-ranked position is reduced first"
    reduced = [s.account for s in steps]
    order = list(dict.fromkeys(reduced))
    print("ADL steps:", [(s.account[:8], s.size_abs / WAD, s.score) for s in steps], "need", need)
    assert order == [w for _, w in truth][: len(order)], "reduced in rank order"
    for acct in order[:-1]:  # a position is left for the next only once closed in full
        assert ex.functions.positionOf(acct, 1).call()[0] == 0
    # the lower-ranked profitable positions and the losing short are untouched
    untouched = [w for _, w in truth if w not in reduced]
    assert untouched, "the step sizing must not deleverage everyone"
    # minimal-ish: realized profit within the margin of what the rule needs
    e.live.sync()
    with e.engine.connect() as conn:
        rows = list(conn.execute(select(ADL_EVENTS).order_by(ADL_EVENTS.c.id)).mappings())
    assert [r["account"] for r in rows] == reduced, "every step recorded in adl_events"
    realized = sum(int(r["realized_pnl"]) for r in rows)
    assert need <= realized <= need * 1.05 + 10 * USDC, (need, realized)
    logs = ex.events.AdlStateChanged().get_logs(from_block=0)
    assert logs[-1]["args"]["active"] is False


def test_a_market_with_a_bad_oracle_is_skipped_and_the_others_checked(
    small_vault: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A feed answering 0 makes the exchange's views of that market revert (OracleInvalid): the ADL
    job says so in one line and goes on with the other markets, instead of failing the whole job."""
    from keeper.chain.connect import contract

    e = small_vault
    ex = e.d.c["Exchange"]
    bad = next(m for m in e.d.markets if m.id == 2)
    feeds = [contract(e.d.w3, "MockAggregator", f) for f in (bad.primary, bad.secondary)]
    e.d.send_all([e.d.tx(agg, "setAnswer", [0], e.d.feed_owner(agg.address), gas=200_000) for agg in feeds])
    with pytest.raises(Exception, match="0x580664e1"):  # OracleInvalid(uint256,uint8,uint8)
        ex.functions.adlState(2).call()
    checked: list[int] = []

    async def main() -> list[Any]:
        rpc = RpcClient(e.anvil.url, timeout=30.0)
        views = ExchangeViews(rpc, ex.address, e.d.c["OracleHub"].address)
        real = views.adl_state

        async def adl_state(m: int) -> Any:
            checked.append(m)
            return await real(m)

        views.adl_state = adl_state  # type: ignore[method-assign]
        txm = TxManager(rpc, signer(ADL_KEY), TxJournal(e.engine), "adl", 31337, 100 * GWEI)
        adl = AdlExecutor(views, txm, e.engine, 31337, [2, 0, 1])
        try:
            return await adl.run_once(await views.params())
        finally:
            await rpc.close()

    with caplog.at_level("WARNING", logger="keeper.executor.adl"):
        sent = asyncio.run(asyncio.wait_for(main(), 60))
    assert sent == [] and checked == [2, 0, 1], "market 2 skipped, markets 0 and 1 still checked"
    lines = [r.getMessage() for r in caplog.records if "ADL check of market 2 skipped" in r.getMessage()]
    assert len(lines) == 1 and "OracleInvalid" in lines[0], lines


def test_socialized_loss_raises_a_fund_shortfall_alert(empty_fund: Env) -> None:
    e = empty_fund
    ex = e.d.c["Exchange"]
    victim = e.d.traders[0]
    e.d.send(e.d.tx(ex, "setCertified", [victim, True], e.d.risk_admin))
    e.d.send(e.d.trade_tx(victim, 1, 10 * WAD, leverage=20))  # $20,000 ETH long
    c = ex.functions.collateralOf(victim).call()
    e.d.send(e.d.tx(ex, "withdraw", [c - 1_100 * USDC], victim))
    e.live.sync()
    sent: list[Any] = []

    class Sink:
        name = "test"

        async def deliver(self, msg: Any) -> DeliveryResult:
            sent.append(msg)
            return DeliveryResult(sink="test", channel="webhook", target="test", ok=True, attempts=1)

    async def main() -> FundWatch:
        dispatcher = AlertDispatcher([Sink()])
        watch = FundWatch(e.engine, 31337, dispatcher)
        assert await watch.run_once() == []
        e.d.set_price(1, 1_800 * 10**8)  # -10 %: AV far below zero
        assert e.d.liquidate_all([victim]) == 1
        e.live.sync()
        found = await watch.run_once()
        assert len(found) == 1
        assert await watch.run_once() == []  # once only
        await dispatcher.close()
        return watch

    watch = asyncio.run(asyncio.wait_for(main(), 60))
    assert len(watch.seen) == 1
    s = watch.seen[0]
    assert s.account == victim and s.paid_by_fund < s.debt and s.socialized == s.debt - s.paid_by_fund
    assert len(sent) == 1 and "shortfall" in sent[0].text and s.tx_hash in sent[0].text
    assert any(k.startswith(AlertKind.FUND_SHORTFALL.value) for k in dispatcher_keys(watch))
    assert shortfalls(e.engine, 31337) == watch.seen


def dispatcher_keys(watch: FundWatch) -> list[str]:
    return list(watch.dispatcher.gate.active()) if watch.dispatcher is not None else []
