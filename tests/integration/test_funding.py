"""Funding settlement on a real anvil: 48 chain hours, restart and rival keepers, and lane isolation.

Chain time is driven with ``evm_setNextBlockTimestamp`` (never evm_increaseTime); the feeds are re-posted
(MockAggregator.setAnswer from their owner) every simulated hour so the oracle never goes stale.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select

from keeper.chain.rpc import RpcClient
from keeper.devchain.anvil import DEV_KEYS
from keeper.executor.funding import ExchangeViews, FundingSettler, settle_calldata, update_figures
from keeper.executor.journal import TxJournal, TxState
from keeper.executor.keys import Signer
from keeper.executor.txmanager import TxManager
from keeper.indexer.target import IndexTarget
from keeper.indexer.testing import Driver, LiveIndexer, open_store
from keeper.observability.metrics import KeeperMetrics
from keeper.schedule import ChainClock, KeeperSchedule
from keeper.store.models import FUNDING_SETTLEMENTS

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytestmark = pytest.mark.integration

GWEI = 10**9
WAD = 10**18
HOUR = 3_600
#: anvil's public dev keys 6..8 (accounts 0..2 are admin/risk admin/guardian, 3..5 our traders)
DEV = {
    6: DEV_KEYS[6],
    7: "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    8: "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
}
FUNDING_KEY, LIQ_KEY, RIVAL_KEY = 7, 6, 8


def signer(i: int) -> Signer:
    acct = Account.from_key(DEV[i])
    return Signer(acct.address, acct)


@dataclass
class Harness:
    deployed: Any
    d: Driver
    engine: Engine
    live: LiveIndexer
    rpc: RpcClient
    views: ExchangeViews
    markets: list[int]

    @property
    def w3(self) -> Any:
        return self.d.w3

    def req(self, method: str, params: list[Any]) -> Any:
        r = self.w3.provider.make_request(method, params)
        assert "error" not in r, r
        return r.get("result")

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def at(self, t: int) -> None:
        self.req("evm_setNextBlockTimestamp", [t])

    def mine_at(self, t: int) -> None:
        self.req("evm_mine", [t])

    def automine(self, on: bool) -> None:
        self.req("evm_setAutomine", [on])

    def state(self, m: int) -> tuple[Any, ...]:
        return tuple(self.d.c["Exchange"].functions.marketState(m).call())

    def manager(self, key: int, lane: str, cap: int = 100 * GWEI, **kw: Any) -> TxManager:
        return TxManager(self.rpc, signer(key), TxJournal(self.engine), lane, 31337, cap, **kw)

    def trade_hour(self, rng: random.Random, n: int = 2) -> None:
        sizes = {0: WAD // 50, 1: WAD, 2: 10 * WAD}
        txs = []
        for _ in range(n):
            who = self.d.traders[rng.randrange(3)]
            m = rng.choice(self.markets)
            sign = 1 if rng.random() < 0.6 else -1
            txs.append(self.d.trade_tx(who, m, sign * sizes[m] * rng.randint(1, 2), leverage=2))
        for t in txs:
            self.d.send(t, must_succeed=False)  # a rare cap/tier rejection is part of the traffic

    def settle_all_at_next_hour(self, who: str) -> int:
        """Starts the test at the top of an hour with every market settled by ``who``, whatever minute the
        chain started at (an hour turning during set-up would otherwise leave a period open)."""
        b = _boundary(self.now())
        self.at(b)
        self.d.set_answers()
        for m in self.markets:
            self.d.send(self.d.tx(self.d.c["Exchange"], "settleFunding", [m], who))
        return b

    def sync(self) -> None:
        self.live.sync()

    def close(self) -> None:
        self.live.close()


@pytest.fixture
def harness(deployed: Any, tmp_path: Path) -> Iterator[Harness]:
    d = Driver(deployed.w3, deployed.deployment)
    d.fund_traders()
    target = IndexTarget.from_file(deployed.path)
    engine, store = open_store(f"sqlite:///{tmp_path / 'keeper.db'}", target)
    live = LiveIndexer(deployed.anvil.url, store)
    rpc = RpcClient(deployed.anvil.url, timeout=30.0)
    views = ExchangeViews(
        rpc, deployed.deployment.address("Exchange"), deployed.deployment.address("OracleHub")
    )
    h = Harness(deployed, d, engine, live, rpc, views, [m.id for m in d.markets])
    try:
        yield h
    finally:
        live.close()
        engine.dispose()


def run(coro: Any, timeout: float = 240) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _settlements(engine: Engine, m: int) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(FUNDING_SETTLEMENTS)
                .where(FUNDING_SETTLEMENTS.c.market_id == m)
                .order_by(FUNDING_SETTLEMENTS.c.block_number)
            ).mappings()
        )


def _boundary(t: int) -> int:
    return (t // HOUR + 1) * HOUR


# ----------------------------------------------------------------------------------------- (a)


def test_48_hours_one_settlement_per_market_per_hour(harness: Harness) -> None:
    h = harness
    rng = random.Random(48)
    metrics = KeeperMetrics(CollectorRegistry())

    async def main() -> None:
        txm = h.manager(FUNDING_KEY, "funding")
        settler = FundingSettler(h.views, txm, h.markets, metrics=metrics)
        sched = KeeperSchedule(ChainClock(h.rpc))

        async def job(_tick: Any) -> None:
            await settler.run_once()

        sched.add("funding", job)
        prev_period: dict[int, int] = {}
        # Start at the top of an hour with every market settled, whatever minute the chain started at.
        b0 = _boundary(h.now())
        h.at(b0)
        h.d.set_answers()
        assert (await sched.run_due())["funding"]
        assert (await sched.run_due())["funding"]
        base = dict(settler.stats)
        for hour in range(48):
            # The next hour boundary at least 40 min ahead, so that "mid-hour" is still in the future
            # whatever the wall-clock minute the chain started at.
            b = _boundary(h.now() + 2_400)
            h.at(b - 1_800)  # mid-hour: some trades, now and then a small price move
            if hour % 6 == 3:
                h.d.move_prices(1.002 if hour % 12 == 3 else 0.998)
            h.trade_hour(rng)
            # not due yet: a pass sends nothing
            assert (await sched.run_due())["funding"]
            assert settler.stats["sent"] - base["sent"] == 3 * hour, "not due: nothing sent"
            h.sync()
            figs = {
                f["market_id"]: f for f in update_figures(h.engine, 31337, chain_time=h.now(), block_number=0)
            }
            for m in h.markets:
                assert (
                    figs[m]["predicted_rate_wad"] == (h.d.c["Exchange"].functions.nextFunding(m).call()[0])
                ), "keeper's predicted rate == contract's"
            h.at(b)  # the hour turns: feeds re-posted in the first block of the new period
            h.d.set_answers()
            assert (await sched.run_due())["funding"]  # sends the 3 settlements (automine: mined at once)
            assert (await sched.run_due())["funding"]  # new head: collects the receipts, sends nothing
            h.sync()
            figs = {
                f["market_id"]: f for f in update_figures(h.engine, 31337, chain_time=h.now(), block_number=0)
            }
            for m in h.markets:
                st = h.state(m)
                assert st[5] == b // HOUR, f"hour {hour} market {m}: settled for this hour's period"
                if hour:
                    assert st[5] == prev_period[m] + 1, f"hour {hour} market {m}: one period each"
                prev_period[m] = st[5]
                assert figs[m]["funding_index"] == st[4], (
                    f"hour {hour} market {m}: keeper index == contract's"
                )
                assert figs[m]["matches"], figs[m]["mismatch"]
        assert settler.stats["sent"] - base["sent"] == 48 * 3
        assert settler.stats["mined"] - base["mined"] == 48 * 3
        assert settler.stats["errors"] == settler.stats["reverted"] == 0
        await h.rpc.close()

    run(main())
    for m in h.markets:
        rows = _settlements(h.engine, m)
        periods = [int(r["period"]) for r in rows]
        assert len(rows) == 1 + 48  # the baseline settlement, then one per simulated hour
        assert periods[1:] == list(range(periods[1], periods[1] + 48)), "exactly one per hour, none missed"
    rows = TxJournal(h.engine).all(31337, signer(FUNDING_KEY).address)
    assert len(rows) == 3 + 144 and all(jt.tx.state == TxState.MINED.value for jt in rows)
    count = metrics.registry.get_sample_value("keeper_funding_lateness_seconds_count")
    total = metrics.registry.get_sample_value("keeper_funding_lateness_seconds_sum")
    assert count == 3 + 144 and total is not None and total / count < 30


# ----------------------------------------------------------------------------------------- (b)


def test_restart_mid_period_and_rival_keeper(harness: Harness) -> None:
    h = harness
    ex = h.d.c["Exchange"]
    rival = Account.from_key(DEV[RIVAL_KEY]).address
    h.trade_hour(random.Random(1), n=4)
    start: dict[int, int] = {}  # each market's last settled period once set up

    async def main() -> None:
        settler = FundingSettler(h.views, h.manager(FUNDING_KEY, "funding"), h.markets)
        h.settle_all_at_next_hour(rival)
        start.update({m: int(h.state(m)[5]) for m in h.markets})

        # hour 1: normal
        b = _boundary(h.now())
        h.at(b)
        h.d.set_answers()
        await settler.run_once()
        await settler.run_once()
        assert settler.stats["mined"] == 3

        # hour 2: our settlements are in the pool (not mined) when the keeper is killed
        b = _boundary(h.now())
        h.at(b)
        h.d.set_answers()
        h.automine(False)
        results = await settler.run_once()
        assert [r.action for r in results] == ["sent"] * 3
        del settler  # "kill -9": in-memory state lost, journal kept
        settler2 = FundingSettler(h.views, h.manager(FUNDING_KEY, "funding"), h.markets)
        recovered = await settler2.txm.recover()  # type: ignore[union-attr]
        assert len(recovered) == 3
        again = await settler2.run_once()  # ours, recovered from the journal: awaited, not re-sent
        assert [r.action for r in again] == ["pending"] * 3
        # a keeper without our journal (another node) would simulate at pending: FundingNotDue, a no-op
        other = FundingSettler(h.views, h.manager(RIVAL_KEY, "funding"), h.markets)
        assert [r.action for r in await other.run_once()] == ["settled_by_other"] * 3
        h.mine_at(b + 2)
        h.automine(True)
        await settler2.run_once()
        assert all(x.done() and x.outcome and x.outcome.state == "mined" for x in recovered)
        assert settler2.stats["mined"] == 3, "recovered settlements measured (lateness) once mined"
        after = await settler2.run_once()
        assert [r.action for r in after] == ["not_due"] * 3, "chain state says settled: nothing re-sent"

        # hour 3: a rival keeper settles market 1 first (mined), market 2 is in the pool when we look
        b = _boundary(h.now())
        h.at(b)
        h.d.set_answers()
        h.d.send(h.d.tx(ex, "settleFunding", [1], rival))
        h.automine(False)
        h.w3.eth.send_transaction(
            {"from": rival, "to": ex.address, "data": settle_calldata(2), "gas": 300_000}
        )
        res = {r.market_id: r.action for r in await settler2.run_once()}
        assert res == {0: "sent", 1: "not_due", 2: "settled_by_other"}
        h.mine_at(b + 3)
        h.automine(True)
        await settler2.run_once()

        # hour 4: restart after everything was settled, just after the hour turned
        b = _boundary(h.now())
        h.at(b)
        h.d.set_answers()
        settler3 = FundingSettler(h.views, h.manager(FUNDING_KEY, "funding"), h.markets)
        await settler3.run_once()
        await settler3.run_once()
        settler4 = FundingSettler(h.views, h.manager(FUNDING_KEY, "funding"), h.markets)
        assert [r.action for r in await settler4.run_once()] == ["not_due"] * 3
        for m in h.markets:
            assert h.state(m)[5] == start[m] + 4
        await h.rpc.close()

    run(main())
    h.sync()
    for m in h.markets:
        every = [int(r["period"]) for r in _settlements(h.engine, m)]
        assert len(every) == len(set(every)), f"a period settled twice: {every}"
        periods = [p for p in every if p > start[m]]
        assert periods == list(range(start[m] + 1, start[m] + 5)), periods
    ours = TxJournal(h.engine).all(31337, signer(FUNDING_KEY).address)
    assert len(ours) == 3 + 3 + 1 + 3
    assert all(jt.tx.state == TxState.MINED.value for jt in ours), "no reverted funding transaction of ours"
    receipts = [h.w3.eth.get_transaction_receipt(jt.tx.tx_hash) for jt in ours]
    assert all(r["status"] == 1 for r in receipts)


# ----------------------------------------------------------------------------------------- (d)


def test_stuck_funding_does_not_delay_a_liquidation(harness: Harness) -> None:
    h = harness
    ex = h.d.c["Exchange"]
    victim = h.d.traders[0]
    h.d.send(h.d.tx(ex, "setCertified", [victim, True], h.d.risk_admin))  # professional: 20x
    h.d.send(h.d.trade_tx(victim, 1, 2 * WAD, leverage=20))  # 2 ETH long at $2,000
    # shrink the victim's collateral so that a drop makes it liquidatable
    coll = ex.functions.collateralOf(victim).call()
    h.d.send(h.d.tx(ex, "withdraw", [coll - 250 * 10**6], victim))
    h.d.set_price(1, h.d.price_for_ratio(victim, 1, 1.05))
    assert ex.functions.isLiquidatable(victim).call()

    async def main() -> None:
        funding_txm = h.manager(FUNDING_KEY, "funding", cap=5 * GWEI)  # fee cap below the spike
        liq_txm = h.manager(LIQ_KEY, "liquidation", cap=1_000 * GWEI)
        settler = FundingSettler(h.views, funding_txm, h.markets)
        await funding_txm.recover()
        await liq_txm.recover()
        b = _boundary(h.now())
        h.at(b)
        h.d.set_answers()
        h.automine(False)
        h.req("anvil_setNextBlockBaseFeePerGas", [hex(50 * GWEI)])
        h.mine_at(b + 1)  # the gas spike: base fee 50 gwei
        res = await settler.run_once()
        assert [r.action for r in res] == ["sent"] * 3  # signed, refused by the node (max fee < base fee)
        liq_data = ex.encode_abi("liquidateBatch", args=[[victim], [1]])
        liq = await liq_txm.submit(ex.address, liq_data, purpose="liquidate")
        h.mine_at(b + 2)
        await liq_txm.tick()
        await funding_txm.tick()
        assert liq.done() and liq.outcome is not None and liq.outcome.state == "mined"
        assert not any(x.done() for x in settler.in_flight().values()), "funding still stuck"
        assert h.state(0)[5] < b // HOUR
        # the spike passes: the funding lane gets through on its own
        h.req("anvil_setNextBlockBaseFeePerGas", [hex(1 * GWEI)])
        h.mine_at(b + 3)
        for i in range(6):
            await settler.run_once()
            h.mine_at(b + 4 + i)
            if settler.stats["mined"] == 3:
                break
        assert settler.stats["mined"] == 3
        h.automine(True)
        await h.rpc.close()

    run(main())
    assert ex.functions.positionOf(victim, 1).call()[0] < 2 * WAD, "the liquidation went through"


# ----------------------------------------------------------------------------------------- CLI


def test_cli_funding_once(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import json

    from keeper.cli import main as cli

    h = harness
    h.trade_hour(random.Random(3), n=3)
    h.settle_all_at_next_hour(Account.from_key(DEV[RIVAL_KEY]).address)
    cfg = tmp_path / "k.toml"
    cfg.write_text(
        f'[chain]\nrpc_urls = ["{h.deployed.anvil.url}"]\nchain_id = 31337\n'
        f'deployments_file = "{h.deployed.path}"\n[database]\nurl = "sqlite:///{tmp_path / "keeper.db"}"\n'
    )
    monkeypatch.setenv("KEEPER_FUNDING_KEY", DEV[FUNDING_KEY])
    h.sync()
    assert cli(["funding", "--config", str(cfg), "--once", "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["action"] for m in out["markets"]] == ["not_due"] * 3
    b = _boundary(h.now())
    h.at(b)
    h.d.set_answers()
    assert cli(["funding", "--config", str(cfg), "--once", "--dry-run", "--json"]) == 0
    assert [m["action"] for m in json.loads(capsys.readouterr().out)["markets"]] == ["due"] * 3
    assert cli(["funding", "--config", str(cfg), "--once", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["action"] for m in out["markets"]] == ["sent"] * 3
    assert all(m["due_at"] == b + HOUR for m in out["markets"])
    for m in out["markets"]:  # 18-decimal figures as exact strings (beyond JSON's safe integers)
        st = h.state(m["market"])
        assert (m["index"], m["last_rate"]) == (str(st[4]), str(st[6]))
    assert cli(["funding", "--config", str(cfg), "--once"]) == 0
    text = capsys.readouterr().out
    assert "[not_due]" in text and "next due" in text, text


# ----------------------------------------------------------------------------------------- schedule


def test_schedule_runs_on_chain_time_one_instance_coalesced(anvil: Any) -> None:
    async def main() -> None:
        rpc = RpcClient(anvil.url, timeout=10.0)
        sched = KeeperSchedule(ChainClock(rpc))
        hourly: list[int] = []
        concurrent = {"now": 0, "max": 0, "runs": 0}

        async def hourly_job(tick: Any) -> None:
            hourly.append(tick.timestamp // HOUR)

        async def slow_job(tick: Any) -> None:
            concurrent["now"] += 1
            concurrent["max"] = max(concurrent["max"], concurrent["now"])
            await asyncio.sleep(0.3)  # longer than its poll interval
            concurrent["now"] -= 1
            concurrent["runs"] += 1

        sched.add("hourly", hourly_job, every=HOUR, poll=0.05)
        sched.add("slow", slow_job, poll=0.05)
        t0 = int((await rpc.call("eth_getBlockByNumber", ["latest", False]))["timestamp"], 16)
        base = (t0 // HOUR + 1) * HOUR
        await rpc.call("evm_mine", [base + 10])
        sched.start()
        await asyncio.sleep(0.4)
        await rpc.call("evm_mine", [base + 1_000])  # same chain hour: no new hourly run
        await asyncio.sleep(0.3)
        await rpc.call("evm_mine", [base + 3 * HOUR + 5])  # two hours skipped: one (coalesced) run
        await asyncio.sleep(0.4)
        await rpc.call("evm_mine", [base + 3 * HOUR + 50])
        for _ in range(4):  # new heads while the slow job is still running
            await rpc.call("evm_mine", [])
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await sched.shutdown()
        await rpc.close()
        assert hourly == [base // HOUR, base // HOUR + 3]
        assert concurrent["max"] == 1 and concurrent["runs"] >= 2

    asyncio.run(asyncio.wait_for(main(), 30))
