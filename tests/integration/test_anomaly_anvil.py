"""The four anomaly rules staged on a real anvil through real transactions, indexed into a real database
(SQLite and PostgreSQL), evaluated by the keeper's AnomalyWatch: each flag is stored, alerted once to a
real webhook, counted, shown on the page and in /api/anomalies — and nothing is done about it on chain.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alert_receivers import receivers
from prometheus_client import CollectorRegistry
from publisher_support import ServerThread, Stack, size_for

from keeper.alerts.dispatcher import AlertDispatcher
from keeper.alerts.sinks import RetryPolicy, WebhookSink
from keeper.config import AnomalySettings
from keeper.devchain.anvil import rpc_call
from keeper.observability.metrics import KeeperMetrics
from keeper.risk.anomaly import AnomalyWatch

pytestmark = pytest.mark.integration

USDC = 10**6
SETTINGS = AnomalySettings(
    poll_interval=0.2,
    oi_share_bps=5_000, oi_window_blocks=100, oi_min_usd=10_000,
    loop_min_count=6, loop_window_blocks=100,
    funding_min_accounts=5, funding_window_blocks=100,
    oracle_sigma=6.0, oracle_samples=30, oracle_min_samples=5, oracle_min_move_bps=500,
)  # fmt: skip


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def stage(stack: Stack) -> dict[str, Any]:
    """Real transactions producing each rule once; returns who/what each flag should name."""
    d = stack.driver
    ex = d.c["Exchange"]
    btc, eth, sol = (next(m.id for m in d.markets if m.symbol == s) for s in ("BTC", "ETH", "SOL"))
    d.fund_traders()
    whale, small_long, small_short, looper = d.traders[:4]
    d.send(d.tx(ex, "setCertified", [whale, True], d.risk_admin))  # professional: $50k orders, 20x
    # 1. oi_share: two small traders make a $6k market, then one account takes $40k of it at once
    d.send_all([d.trade_tx(small_long, btc, size_for(d, btc, 3_000), 2),
                d.trade_tx(small_short, btc, -size_for(d, btc, 3_000), 2),
                d.trade_tx(whale, btc, size_for(d, btc, 40_000), 5)])  # fmt: skip
    # 2. open_close_loop: four round trips in ETH (4 opens + 4 closes)
    size = size_for(d, eth, 1_000)
    for _ in range(4):
        d.send_all([d.trade_tx(looper, eth, size, 2), d.trade_tx(looper, eth, -size, 2)])
    # 3. funding_source: one address makes the first deposit of five fresh accounts (depositFor)
    funder = d.admin
    fresh = [f"0x{0xF00D0 + i:040x}" for i in range(5)]
    d.send_all([d.tx(d.usdc, "faucet", [funder, 5_000 * USDC], funder),
                d.tx(d.usdc, "approve", [ex.address, 2**256 - 1], funder)])  # fmt: skip
    d.send_all(
        [d.tx(ex, "depositFor", [stack.w3.to_checksum_address(a), 1_000 * USDC], funder) for a in fresh]
    )
    # 4. oracle_jump: SOL wanders ±0.2% for seven refreshes, then jumps +10%
    for answer in (150.3, 149.9, 150.2, 150.0, 149.8, 150.1, 150.0):
        d.set_price(sol, int(answer * 10**8))
    d.set_price(sol, 165 * 10**8)
    return {"whale": whale.lower(), "looper": looper.lower(), "funder": funder.lower(), "fresh": fresh,
            "btc": btc, "eth": eth, "sol": sol}  # fmt: skip


def test_each_anomaly_rule_on_anvil_is_flagged_alerted_once_shown_and_not_acted_on(
    deployed: Any, new_db: Callable[[], str], tmp_path: Path
) -> None:
    stack = Stack(deployed, new_db())
    try:
        want = stage(stack)
        stack.index()
        ex = stack.driver.c["Exchange"]
        positions = {a: [ex.functions.positionOf(a, m.id).call() for m in stack.driver.markets]
                     for a in stack.driver.traders}  # fmt: skip
        head = int(str(rpc_call(stack.url, "eth_blockNumber", [])), 16)
        metrics = KeeperMetrics(CollectorRegistry())
        fast = RetryPolicy(3, 0.05, 0.2)
        with receivers() as inbox:

            def watch_once(watch: AnomalyWatch) -> list[Any]:
                async def go() -> list[Any]:
                    try:
                        return await watch.run_once()
                    finally:
                        await watch.dispatcher.close()

                return asyncio.run(go())

            def new_watch() -> AnomalyWatch:
                ops = WebhookSink(f"{inbox.hook_base}/ops", name="ops", retry=fast)
                return AnomalyWatch(stack.engine, stack.dep.chain_id, SETTINGS, AlertDispatcher([ops]),
                                    metrics=metrics)  # fmt: skip

            watch = new_watch()
            flags = watch_once(watch)
            got = {f.rule: f for f in flags}
            assert sorted(got) == ["funding_source", "oi_share", "open_close_loop", "oracle_jump"], flags
            assert len(flags) == 4  # one flag per staged anomaly, nothing else
            assert got["oi_share"].subject == f"{want['whale']}:{want['btc']}"
            assert got["oi_share"].detail["share_bps"] > 8_000  # 40k of 46k
            assert got["open_close_loop"].subject == f"{want['looper']}:{want['eth']}"
            assert got["open_close_loop"].detail["count"] == 8
            assert got["funding_source"].subject == want["funder"]
            assert got["funding_source"].detail["funded"] == sorted(want["fresh"])
            assert got["oracle_jump"].subject == str(want["sol"])
            assert 990 <= got["oracle_jump"].detail["return_bps"] <= 1_010
            # alerted once each, on the real webhook
            texts = inbox.texts("ops")
            assert sorted(texts) == sorted(
                f"[WARNING] anomaly ({f.rule}:{f.subject}@{f.block})" for f in flags
            )
            assert all("the keeper takes no action" in b["text"] for b in inbox.posts["ops"])
            for rule in got:
                assert metrics.anomaly_flags.labels(rule=rule)._value.get() == 1
            # more blocks, the same watch and a restarted one: nothing new, nothing re-alerted
            stack.driver.mine(3)
            stack.index()
            assert watch_once(watch) == [] and watch_once(new_watch()) == []
            assert len(inbox.texts("ops")) == 4

        # shown: /api/anomalies and the page's "Anomaly watch" section
        stack.publish()
        with ServerThread(stack) as server:
            api = get_json(f"{server.base}/api/anomalies")
            assert api["total"] == 4 and "never acts" in api["note"]
            assert sorted(i["rule"] for i in api["items"]) == sorted(got)
            by_rule = {i["rule"]: i for i in api["items"]}
            assert by_rule["oracle_jump"]["market"] == "SOL" and by_rule["oi_share"]["market"] == "BTC"
            assert by_rule["open_close_loop"]["account"] == want["looper"]
            with urllib.request.urlopen(f"{server.base}/", timeout=10) as r:
                page = r.read().decode()
            section = page[page.index('id="anomalies"') :]
            assert "4 in total" in section and "never acts on them" in section
            for rule in got:
                assert f"<td>{rule}</td>" in section
            for who in (want["whale"], want["looper"], want["funder"]):
                assert f"<code>{who[:14]}</code>" in section.lower()

        # not acted on: no transaction was sent, every position is as the traders left it
        assert int(str(rpc_call(stack.url, "eth_blockNumber", [])), 16) == head + 3
        assert int(rpc_call(stack.url, "txpool_status", [])["pending"], 16) == 0  # type: ignore[index]
        assert positions == {a: [ex.functions.positionOf(a, m.id).call() for m in stack.driver.markets]
                             for a in stack.driver.traders}  # fmt: skip
    finally:
        stack.close()
