"""The keeper's metrics: one dedicated registry, keeper_ names, served over real HTTP."""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from keeper.observability.metrics import METRICS, KeeperMetrics, metrics_app, reorg_depth_bucket
from keeper.risk.math import WarningTier


async def _scrape(app: web.Application) -> tuple[int, str, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return resp.status, resp.headers["Content-Type"], await resp.text()
    finally:
        await runner.cleanup()


def test_scrape_and_parse() -> None:
    m = KeeperMetrics()
    assert math.isnan(m._head_age())  # no head seen yet: unknown, not 0
    m.observe_head(int(time.time()) - 30)
    m.index_lag.set(2)
    m.record_events(10, now=0.0)
    m.record_events(40, now=2.0)
    m.set_tier_counts({WarningTier.HEALTHY: 90, WarningTier.DANGER: 3})
    m.record_liquidation("sent")
    m.record_liquidation("mined")
    m.record_liquidation("lost_race")
    m.observe_liquidation_latency(blocks=2, seconds=4.2)
    m.pending_transactions.labels(lane="liquidation").set(1)
    m.record_gas("liquidation", 21_000 * 10**9)
    m.record_gas("funding", 0)  # nothing paid: no sample
    m.balance.set(5 * 10**18)
    m.funding_lateness.observe(12)
    m.fund_balance.set(1_000_000.5)
    m.fund_coverage.set(1.8)
    m.set_oracle_trust("ETH-USD", trusted=False)
    m.anomaly_flags.labels(rule="price_jump").inc()
    m.reconcile_mismatches.inc()
    m.record_reorg(5)
    m.rpc_errors.labels(kind="timeout").inc(2)

    status, ctype, body = asyncio.run(_scrape(metrics_app(m.registry)))
    assert status == 200 and ctype.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert families and all(name.startswith("keeper_") for name in families)

    def value(name: str, **labels: str) -> float:
        for s in (s for f in families.values() for s in f.samples):
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        raise AssertionError(f"{name} {labels} not exported")

    assert 30 <= value("keeper_head_age_seconds") < 40  # computed at scrape time
    assert value("keeper_index_lag_blocks") == 2
    assert value("keeper_events_indexed_total") == 50
    assert value("keeper_events_indexed_per_second") == 20  # 40 events over 2 s
    assert value("keeper_accounts_by_tier", tier="danger") == 3
    assert value("keeper_accounts_by_tier", tier="liquidatable") == 0
    assert value("keeper_liquidations_total", outcome="mined") == 1
    assert value("keeper_liquidations_total", outcome="failed") == 0
    assert value("keeper_liquidation_latency_blocks_count") == 1
    assert value("keeper_liquidation_latency_seconds_bucket", le="8.0") == 1
    assert value("keeper_pending_transactions", lane="liquidation") == 1
    assert value("keeper_gas_spent_wei_total", lane="liquidation") == 21_000 * 10**9
    assert not [s for f in families.values() for s in f.samples if s.labels.get("lane") == "funding"]
    assert value("keeper_balance_wei") == 5e18
    assert value("keeper_funding_lateness_seconds_sum") == 12
    assert value("keeper_fund_balance_usd") == 1_000_000.5
    assert value("keeper_fund_coverage_ratio") == 1.8
    assert value("keeper_oracle_untrusted", market="ETH-USD") == 1
    assert value("keeper_anomaly_flags_total", rule="price_jump") == 1
    assert value("keeper_book_reconcile_mismatches_total") == 1
    assert value("keeper_reorgs_total", depth="4-7") == 1
    assert value("keeper_rpc_errors_total", kind="timeout") == 2


def test_dedicated_registry() -> None:
    from prometheus_client import REGISTRY

    assert METRICS.registry is not REGISTRY
    assert REGISTRY.get_sample_value("keeper_index_lag_blocks") is None
    assert [reorg_depth_bucket(d) for d in (1, 2, 3, 4, 15, 16, 64, 500)] == [
        "1",
        "2-3",
        "2-3",
        "4-7",
        "8-15",
        "16-63",
        "64+",
        "64+",
    ]


def test_liquidation_latency_from_trigger_block_to_mined() -> None:
    from keeper.observability.latency import LiquidationLatency

    m = KeeperMetrics()
    lat = LiquidationLatency(m)
    lat.seen(100, ["0xAA", "0xBB"])  # the oracle update of block 100 put both under
    lat.seen(101, ["0xAA", "0xBB", "0xCC"])
    lat.seen(102, ["0xaa", "0xcc"])  # 0xbb recovered: forgotten
    lat.seen(103, ["0xaa", "0xbb", "0xcc"])  # 0xbb under again: a new episode from 103
    lat.mined("0xAA", 104)
    lat.mined("0xBB", 104)
    lat.mined("0xDD", 104)  # never seen liquidatable by this process: not observed
    assert lat.observe({100: 1_000, 103: 1_036, 104: 1_048}) == [(4, 48.0), (1, 12.0)]
    assert lat.observe({}) == []  # observed once
    lat.seen(105, ["0xaa"])  # partially liquidated, still under: keeps its first trigger block
    lat.mined("0xaa", 106)
    [(blocks, seconds)] = lat.observe({106: 1_072})  # the trigger block's time could not be read
    assert blocks == 6 and math.isnan(seconds)
    assert m.liquidation_latency_blocks._sum.get() == 4 + 1 + 6
    assert m.liquidation_latency_seconds._sum.get() == 48 + 12  # no made-up seconds
