"""The anomaly rules (pure), their de-dup, the service on SQLite, and the user-warning tier diff."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import insert

from keeper.alerts.dispatcher import AlertDispatcher, AlertKind
from keeper.alerts.sinks import DeliveryResult, Message
from keeper.alerts.watch import UserWarnings, tier_changes
from keeper.config import AnomalySettings
from keeper.observability.metrics import KeeperMetrics
from keeper.risk import math as rm
from keeper.risk.anomaly import (
    AnomalyWatch,
    Deposit,
    Flag,
    MarketOI,
    Price,
    Trade,
    Window,
    funding_sources,
    new_flags,
    oi_share,
    open_close_loops,
    oracle_jumps,
    recent_flags,
)
from keeper.risk.book import Book
from keeper.store.engine import make_engine
from keeper.store.migrate import upgrade
from keeper.store.models import CHECKPOINTS, EVENTS, MARKETS, ORACLE_PRICES, POSITION_CHANGES

E = 10**18
A, B, C = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20


def test_oi_share_flags_a_large_taker_within_the_window_only() -> None:
    oi = {0: MarketOI(0, 100 * E, 60 * E, 2_000 * E)}  # 160 ETH open, $320k
    trades = [
        Trade(A, 0, 95, 30 * E, 30 * E),
        Trade(A, 0, 98, 20 * E, 50 * E),  # A took 50 of 160 = 31%
        Trade(B, 0, 97, 10 * E, 10 * E),
        Trade(B, 0, 99, -5 * E, 5 * E),  # a reduction: not taken
        Trade(C, 0, 10, 60 * E, 60 * E),  # outside the window
    ]
    flags = oi_share(trades, oi, 100, Window(10), share_bps=2_500, min_oi_usd=10_000)
    assert [(f.rule, f.account, f.market, f.block) for f in flags] == [("oi_share", A, 0, 98)]
    assert flags[0].detail["share_bps"] == 3125
    # a tiny market is not judged; a higher threshold is not crossed
    assert oi_share(trades, oi, 100, Window(10), share_bps=2_500, min_oi_usd=10**6) == []
    assert oi_share(trades, oi, 100, Window(10), share_bps=3_200) == []
    # a flip counts its whole new side
    flip = [Trade(B, 0, 100, -70 * E, -60 * E)]  # +10 → −60
    assert [f.account for f in oi_share(flip, oi, 100, Window(5), share_bps=3_000)] == [B]


def test_open_close_loops_count_opens_closes_and_flips() -> None:
    t = [
        Trade(A, 1, 10, 5 * E, 5 * E),  # open
        Trade(A, 1, 11, -5 * E, 0),  # close
        Trade(A, 1, 12, -3 * E, -3 * E),  # open
        Trade(A, 1, 13, 6 * E, 3 * E),  # flip: 2
        Trade(A, 1, 14, 1 * E, 4 * E),  # increase: 0
        Trade(A, 0, 14, 1 * E, 1 * E),  # other market
        Trade(B, 1, 14, 1 * E, 0, reason=1),  # a liquidation is not the account's loop
    ]
    flags = open_close_loops(t, 20, Window(20), min_count=5)
    assert [(f.account, f.market, f.detail["count"]) for f in flags] == [(A, 1, 5)]
    assert open_close_loops(t, 20, Window(20), min_count=6) == []
    assert open_close_loops(t, 40, Window(20), min_count=1) == []  # all outside the window


def test_funding_sources_count_new_accounts_from_one_third_party() -> None:
    src = "0x" + "5e" * 20
    deps = [Deposit(f"0x{i:040x}", src, 100 + i, True) for i in range(1, 6)]
    deps += [Deposit(A, A, 101, True), Deposit(B, src, 102, False)]  # self-funded; not a first deposit
    flags = funding_sources(deps, 110, Window(50), min_accounts=5)
    assert [(f.subject, f.detail["accounts"]) for f in flags] == [(src, 5)]
    assert funding_sources(deps, 110, Window(50), min_accounts=6) == []
    assert funding_sources(deps, 110, Window(8), min_accounts=5) == []  # only 3 in the last 8 blocks


def test_oracle_jump_beyond_recent_volatility() -> None:
    calm = [2_000, 2_004, 1_998, 2_003, 2_001, 1_999, 2_002, 2_000]
    series = [Price(0, i, p * E) for i, p in enumerate(calm)]
    jump = [*series, Price(0, len(calm), 2_500 * E)]  # +25%
    flags = oracle_jumps(jump, sigma=6, samples=30, min_samples=5, min_move_bps=500)
    assert [(f.rule, f.market, f.block) for f in flags] == [("oracle_jump", 0, len(calm))]
    assert flags[0].detail["return_bps"] == 2500.0 and flags[0].detail["sigmas"] > 6
    assert oracle_jumps(series, sigma=6, samples=30) == []  # calm: nothing
    small = [*series, Price(0, len(calm), 2_020 * E)]  # +1%: many sigmas, but below the floor
    assert oracle_jumps(small, sigma=6, samples=30, min_move_bps=500) == []
    # a volatile market: a 25% move is within its habits
    wild = [Price(1, i, (2_000 + (600 if i % 2 else -600)) * E) for i in range(10)]
    assert oracle_jumps([*wild, Price(1, 10, 1_750 * E)], sigma=6, samples=30, min_move_bps=500) == []
    # not enough history: no verdict
    assert oracle_jumps([Price(2, 0, E), Price(2, 1, 2 * E)], sigma=1, samples=30) == []
    # since_block: every new return is judged, not only the last
    both = [*jump, Price(0, len(calm) + 1, 2_501 * E)]
    assert [f.block for f in oracle_jumps(both, sigma=6, samples=30, since_block=len(calm) - 1)] == [
        len(calm)
    ]


def test_new_flags_dedup_within_the_window() -> None:
    f = Flag("oi_share", "a:0", 100, {})
    assert new_flags([f], {}, {"oi_share": 50}) == [f]
    assert new_flags([f], {("oi_share", "a:0"): 100}, {"oi_share": 50}) == []  # same flag
    assert new_flags([f], {("oi_share", "a:0"): 70}, {"oi_share": 50}) == []  # within the window
    assert new_flags([f], {("oi_share", "a:0"): 40}, {"oi_share": 50}) == [f]  # a new episode


class _Sink:
    name = "test"

    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def deliver(self, msg: Message) -> DeliveryResult:
        self.sent.append(msg)
        return DeliveryResult("test", "webhook", "x", True, 1)


def _row(block: int, **kw: Any) -> dict[str, Any]:
    h = f"0x{block:064x}"
    return {"chain_id": 1, "block_number": block, "block_hash": h, "block_timestamp": 1_000 + block,
            "tx_hash": h, **kw}  # fmt: skip


@pytest.mark.parametrize("per_pass", [5, 2])
def test_watch_stores_alerts_and_counts_each_flag_once(tmp_path: Path, per_pass: int) -> None:
    """Every flag is stored and counted once; alerts one per flag up to ``alerts_per_pass``, then one
    summary for the rest of the pass (a first pass over a long history must not flood the operator)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(engine)
    src = "0x" + "5E" * 20
    with engine.begin() as conn:
        conn.execute(insert(CHECKPOINTS), [{"chain_id": 1, "deployment_key": "k", "start_block": 1,
                                            "block_number": 20, "block_hash": "0x1"}])  # fmt: skip
        conn.execute(insert(MARKETS), [{"chain_id": 1, "market_id": 0, "symbol": "ETH", "long_size": 10 * E,
                                        "short_size": 10 * E, "mark_price": 2_000 * E, "funding_index": 0,
                                        "last_funding_rate": 0}])  # fmt: skip
        conn.execute(insert(POSITION_CHANGES), [
            _row(10 + i, log_index=0, account=A, market_id=0, reason=0, size_delta=d, price=2_000 * E,
                 size_after=a, entry_price_after=0, entry_funding_index_after=0, realized_pnl=0,
                 funding_paid=0, fee=0,
                 collateral_after=0)
            for i, (d, a) in enumerate([(8 * E, 8 * E), (-8 * E, 0), (E, E), (-E, 0), (E, E), (-E, 0)])
        ])  # fmt: skip
        conn.execute(insert(EVENTS), [
            _row(5 + i, tx_index=0, log_index=1, address=A, contract="Exchange", event_name="Deposited",
                 account=f"0x{i:040x}", args={"account": f"0x{i:040x}", "from": src, "amount": "1",
                                              "collateralAfter": "1"})
            for i in range(1, 6)
        ])  # fmt: skip
        conn.execute(insert(ORACLE_PRICES), [
            _row(i + 1, log_index=0, market_id=0, primary_price=p * E, secondary_price=p * E, ema_price=p * E,
                 mark_price=p * E)
            for i, p in enumerate([2_000, 2_004, 1_998, 2_003, 2_001, 1_999, 2_002, 2_000] + [2_000] * 11
                                  + [2_500])
        ])  # fmt: skip
    sink = _Sink()
    metrics = KeeperMetrics(CollectorRegistry())
    settings = AnomalySettings(
        oi_min_usd=0, oi_share_bps=3_000, loop_min_count=6, funding_min_accounts=5, alerts_per_pass=per_pass
    )
    watch = AnomalyWatch(engine, 1, settings, AlertDispatcher([sink]), metrics=metrics, symbols={0: "ETH"})
    flags = asyncio.run(watch.run_once())
    assert sorted(f.rule for f in flags) == ["funding_source", "oi_share", "open_close_loop", "oracle_jump"]
    alerts = 4 if per_pass >= 4 else per_pass + 1
    assert len(sink.sent) == alerts and all("anomaly" in m.subject for m in sink.sent)
    if per_pass < 4:
        assert f"{4 - per_pass} more anomaly flags" in sink.sent[-1].text
    assert metrics.anomaly_flags.labels(rule="oracle_jump")._value.get() == 1
    # the same checkpoint, then a new one with nothing new: no new flag, no new alert
    assert asyncio.run(watch.run_once()) == []
    with engine.begin() as conn:
        conn.execute(CHECKPOINTS.update().values(block_number=21))
    fresh = AnomalyWatch(engine, 1, settings, AlertDispatcher([sink]), metrics=metrics)  # a restart
    assert asyncio.run(fresh.run_once()) == []
    assert len(sink.sent) == alerts
    with engine.connect() as conn:
        total, rows = recent_flags(conn, 1, 0, 10)
    assert total == 4 and {r["rule"] for r in rows} == {f.rule for f in flags}
    assert AlertKind.ANOMALY.value == "anomaly"
    engine.dispose()


def test_tier_changes_diff_and_user_warnings_seed() -> None:
    book = Book({0: 200})
    book.set_mark(0, 2_000 * E)
    pos = rm.PositionState(10 * E, 2_000 * E, 0)
    book.set_account(A, 1_000 * 10**6, {0: pos})  # 20x: 250%, healthy
    book.set_account(B, 450 * 10**6, {0: pos})  # ~112%: danger
    seen: dict[str, int] = {}
    assert tier_changes(book, seen) == {B: int(rm.WarningTier.DANGER)}
    assert tier_changes(book, seen) == {}

    class Disp:
        def __init__(self) -> None:
            self.tracker = AlertDispatcher().tracker
            self.fed: list[tuple[str, rm.WarningTier]] = []

        async def tier_changed(self, a: str, t: rm.WarningTier, *, ratio_bps: int | None = None) -> list[Any]:
            self.fed.append((a, t))
            return []

    async def go() -> Disp:
        d = Disp()
        uw = UserWarnings(d)
        assert uw.on_block(book) == []  # seeds B
        book.set_mark(0, 1_958 * E)  # A below 150%
        fed = uw.on_block(book)
        await uw.drain()
        assert (A, rm.WarningTier.WARNING) in [(a, t) for a, t, _ in fed]
        return d

    d = asyncio.run(go())
    assert (A, rm.WarningTier.WARNING) in d.fed


def test_first_pass_finds_a_jump_made_before_it_among_busy_blocks(tmp_path: Path) -> None:
    """Regressions found on anvil: the first pass on a young chain looked at the latest return only,
    and the history was cut by a row limit while a busy block holds one refresh per trade."""
    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(insert(CHECKPOINTS), [{"chain_id": 1, "deployment_key": "k", "start_block": 1,
                                            "block_number": 20, "block_hash": "0x1"}])  # fmt: skip
        # the jump: block 9
        prices = [2_000, 2_002, 1_999, 2_001, 2_000, 1_998, 2_001, 2_000, 2_150] + [2_150] * 3
        conn.execute(insert(ORACLE_PRICES), [
            _row(b + 1, log_index=k, market_id=0, primary_price=p * E, secondary_price=p * E, ema_price=p * E,
                 mark_price=p * E)
            for b, p in enumerate(prices) for k in range(60)  # 60 refreshes a block (one per trade)
        ])  # fmt: skip
    settings = AnomalySettings(oi_share_bps=0, loop_min_count=0, funding_min_accounts=0)
    watch = AnomalyWatch(engine, 1, settings, metrics=KeeperMetrics(CollectorRegistry()))
    flags = asyncio.run(watch.run_once())
    assert [(f.rule, f.block, f.detail["samples"]) for f in flags] == [("oracle_jump", 9, 7)]
    engine.dispose()
