# ruff: noqa: E501  (HTML/JS/schema literals read better unwrapped)
"""The publisher and the public API against a real anvil: snapshot figures equal the contracts' views at the
stamped block, 24 h figures equal sums of the chain's own FundIncome/FundPayout logs, /api/explain names
the rule each provoked rejection breaks, and the page in a real headless Chromium shows the chain's
figures and updates them in place when a new snapshot lands."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from eth_utils import keccak, to_checksum_address
from publisher_support import USDC, ServerThread, Stack, size_for, stage_liquidations
from sqlalchemy import func, select

from keeper.api import format as fmt
from keeper.chain.connect import contract
from keeper.chain.rpc import RpcClient
from keeper.devchain.simulate import simulate
from keeper.publisher.models import FUND_SNAPSHOTS, MARKET_SNAPSHOTS, WHALE_SNAPSHOTS
from keeper.publisher.snapshot import Publisher
from keeper.store.testdb import throwaway_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
FUND_INCOME = "0x" + keccak(text="FundIncome(uint8,address,uint256,uint256)").hex()
FUND_PAYOUT = "0x" + keccak(text="FundPayout(address,address,uint256,uint256,uint256)").hex()


@pytest.fixture
def stack(deployed: Any, tmp_path: Path) -> Iterator[Stack]:
    with throwaway_database("sqlite", tmp_path) as url:
        s = Stack(deployed, url)
        try:
            yield s
        finally:
            s.close()


def fund_row(stack: Stack, sid: int) -> dict[str, Any]:
    with stack.engine.connect() as conn:
        return dict(conn.execute(select(FUND_SNAPSHOTS).where(FUND_SNAPSHOTS.c.id == sid)).mappings().one())


def market_rows(stack: Stack, sid: int) -> list[dict[str, Any]]:
    with stack.engine.connect() as conn:
        q = (
            select(MARKET_SNAPSHOTS)
            .where(MARKET_SNAPSHOTS.c.snapshot_id == sid)
            .order_by(MARKET_SNAPSHOTS.c.market_id)
        )
        return [dict(r) for r in conn.execute(q).mappings()]


def chain_24h(stack: Stack, block: int, ts: int) -> dict[str, int]:
    """Independent 24 h sums: eth_getLogs of the InsuranceFund, block times from eth_getBlockByNumber."""
    w3 = stack.w3
    logs = w3.eth.get_logs({"address": stack.dep.address("InsuranceFund"), "fromBlock": 0, "toBlock": block})
    out = {"fees": 0, "penalties": 0, "payouts": 0}
    times: dict[int, int] = {}
    for lg in logs:
        bn = lg["blockNumber"]
        if bn not in times:
            times[bn] = w3.eth.get_block(bn)["timestamp"]
        if times[bn] <= ts - 86_400:
            continue
        topic0 = "0x" + bytes(lg["topics"][0]).hex()
        data = bytes(lg["data"])
        if topic0 == FUND_INCOME:
            kind = int.from_bytes(bytes(lg["topics"][1]), "big")
            amount = int.from_bytes(data[:32], "big")
            if kind == 0:
                out["fees"] += amount
            elif kind == 1:
                out["penalties"] += amount
        elif topic0 == FUND_PAYOUT:
            out["payouts"] += int.from_bytes(data[32:64], "big")
    return out


def assert_snapshot_matches_chain(stack: Stack, sid: int) -> dict[str, Any]:
    row = fund_row(stack, sid)
    n = row["block_number"]
    w3 = stack.w3
    blk = w3.eth.get_block(n)
    assert "0x" + bytes(blk["hash"]).hex() == row["block_hash"]
    assert blk["timestamp"] == row["block_timestamp"]
    fund = contract(w3, "InsuranceFund", stack.dep.address("InsuranceFund"))
    ex = contract(w3, "Exchange", stack.dep.address("Exchange"))
    oracle = contract(w3, "OracleHub", stack.dep.address("OracleHub"))
    at = {"block_identifier": n}
    assert row["balance"] == fund.functions.balance().call(**at)
    assert row["total_fee_income"] == fund.functions.totalFeeIncome().call(**at)
    assert row["total_penalty_income"] == fund.functions.totalPenaltyIncome().call(**at)
    assert row["total_payouts"] == fund.functions.totalPayouts().call(**at)
    tpv = 0
    for m in market_rows(stack, sid):
        mid = m["market_id"]
        ls, ss, ln, sn = ex.functions.openInterest(mid).call(**at)
        assert (m["long_size"], m["short_size"], m["long_notional"], m["short_notional"]) == (ls, ss, ln, sn)
        tpv += ln + sn
        ok, mark = oracle.functions.tryMarkPrice(mid).call(**at)
        assert (m["mark_ok"], m["mark_price"]) == (ok, mark)
        assert m["oracle_status"] == oracle.functions.status(mid).call(**at)
        rate, due = ex.functions.nextFunding(mid).call(**at)
        assert (m["next_funding_rate"], m["next_funding_due"]) == (rate, due)
        state = ex.functions.marketState(mid).call(**at)
        assert m["funding_index"] == state[4] and m["last_funding_rate"] == state[6]
        cfg = ex.functions.market(mid).call(**at)
        assert (m["long_oi_cap"], m["short_oi_cap"]) == (cfg[2], cfg[3])
        if ok:
            pnl, assets, active = ex.functions.adlState(mid).call(**at)
            assert (m["adl_trader_pnl"], m["adl_vault_assets"], m["adl_active"]) == (pnl, assets, active)
    assert row["total_position_value"] == tpv
    assert row["coverage_bps"] == (row["balance"] * 10_000 // tpv if tpv else None)
    inc = chain_24h(stack, n, row["block_timestamp"])
    assert (row["income_24h_fees"], row["income_24h_penalties"], row["payouts_24h"]) == (
        inc["fees"],
        inc["penalties"],
        inc["payouts"],
    )
    return row


def test_snapshot_equals_views_and_24h_equals_logs(stack: Stack) -> None:
    simulate(stack.w3, stack.dep, "calm", traders=8, seed=5, blocks=4)
    d = stack.driver
    stage_liquidations(d)
    stack.index()
    first = assert_snapshot_matches_chain(stack, stack.publish())
    assert first["income_24h_penalties"] > 0 and first["payouts_24h"] > 0 and first["bad_debt_24h"] > 0

    # a day and more later: the earlier flows leave the 24 h window, a new trade's fee enters it
    stack.w3.provider.make_request("evm_increaseTime", [90_000])
    d.set_answers()
    d.send(d.trade_tx(d.traders[3], 1, size_for(d, 1, 1_000), 2))
    stack.w3.provider.make_request("evm_mine", [])
    stack.index()
    second = assert_snapshot_matches_chain(stack, stack.publish())
    assert second["income_24h_penalties"] == 0 and second["payouts_24h"] == 0
    assert 0 < second["income_24h_fees"] < second["total_fee_income"]
    with stack.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(WHALE_SNAPSHOTS)).scalar_one() > 0


def test_publisher_loop_publishes_each_head_and_on_time(stack: Stack) -> None:
    """A new head gives a snapshot within the poll interval; an idle chain still gets one every max_interval."""

    async def main() -> list[int]:
        stop = asyncio.Event()
        async with RpcClient(stack.url) as rpc:
            pub = Publisher(stack.engine, rpc, stack.dep, poll_interval=0.1, max_interval=0.6)
            task = asyncio.create_task(pub.run(stop))
            await asyncio.sleep(0.35)
            await rpc.call("evm_mine", [])
            await asyncio.sleep(0.35)
            n_after_head = pub.published
            await asyncio.sleep(1.0)  # idle: the max_interval tick still publishes
            stop.set()
            await task
            return [n_after_head, pub.published]

    after_head, total = asyncio.run(main())
    assert after_head >= 2 and total >= 3
    with stack.engine.connect() as conn:
        blocks = [
            r[0] for r in conn.execute(select(FUND_SNAPSHOTS.c.block_number).order_by(FUND_SNAPSHOTS.c.id))
        ]
    assert blocks[0] < blocks[-1] == stack.w3.eth.block_number - 1  # the loop reads lag_blocks = 1 behind


def test_api_serves_the_snapshot(stack: Stack) -> None:
    simulate(stack.w3, stack.dep, "calm", traders=6, seed=2, blocks=3)
    stack.index()
    sid = stack.publish()
    row = fund_row(stack, sid)
    with ServerThread(stack) as srv:
        _wait_loaded(srv)
        f = requests.get(f"{srv.base}/api/insurance-fund", timeout=5).json()
        assert (
            f["stamp"]["block_number"] == row["block_number"]
            and f["stamp"]["block_hash"] == row["block_hash"]
        )
        assert int(f["balance"]["raw"]) == row["balance"]
        assert f["display"]["fund.balance"] == fmt.usd(row["balance"])
        m = requests.get(f"{srv.base}/api/markets", timeout=5).json()
        assert [x["symbol"] for x in m["markets"]] == [mk.symbol for mk in stack.dep.markets]
        h = requests.get(f"{srv.base}/healthz", timeout=5)
        assert h.status_code == 200, h.text
        # an account page computed from the index and the snapshot's marks agrees with the contract
        trader = _some_trader(stack)
        a = requests.get(f"{srv.base}/api/accounts/{trader}", timeout=5).json()
        ex = contract(stack.w3, "Exchange", stack.dep.address("Exchange"))
        summary = ex.functions.accountSummary(trader).call(block_identifier=row["block_number"])
        assert int(a["risk"]["account_value"]["raw"]) == summary[1]
        assert a["risk"]["margin_ratio_bps"] == summary[4]
        for p in a["positions"]:
            lp = ex.functions.liquidationPrice(trader, p["market_id"], 0).call(
                block_identifier=row["block_number"]
            )
            assert int(p["liquidation_price"] or 0) == lp
        r = requests.get(f"{srv.base}/api/accounts/0xABC", timeout=5)
        assert r.status_code == 400 and r.json()["error"].startswith("address")
        assert (
            r.headers["X-Frame-Options"] == "DENY"
            and "default-src 'self'" in r.headers["Content-Security-Policy"]
        )


def test_healthz_reports_stale_head_and_index(stack: Stack) -> None:
    stack.index()
    stack.publish()
    for _ in range(5):
        stack.w3.provider.make_request("evm_mine", [])
    stack.publish()  # the head moved 5 blocks, the index did not
    with ServerThread(stack, max_index_lag=2) as srv:
        _wait_loaded(srv)
        r = requests.get(f"{srv.base}/healthz", timeout=5)
        assert r.status_code == 503
        assert any(p.startswith("index stale") for p in r.json()["problems"]), r.text
    with ServerThread(stack, max_snapshot_age=0.01) as srv:
        _wait_loaded(srv)
        time.sleep(0.05)
        r = requests.get(f"{srv.base}/healthz", timeout=5)
        assert r.status_code == 503 and any(p.startswith("head stale") for p in r.json()["problems"]), r.text


def _some_trader(stack: Stack) -> str:
    from keeper.store.models import POSITIONS

    with stack.engine.connect() as conn:
        for acct, size in conn.execute(select(POSITIONS.c.account, POSITIONS.c.size)):
            if size != 0:
                return str(acct)
    raise AssertionError("no open position")


def _wait_loaded(srv: ServerThread, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = requests.get(f"{srv.base}/api/insurance-fund", timeout=5)
        if r.status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the server never loaded a snapshot")


# ------------------------------------------------------------------------------------ explain


def test_explain_names_the_rule(stack: Stack) -> None:
    d = stack.driver
    ex = d.c["Exchange"]
    d.fund_traders(100_000 * USDC)  # educated novices with $50,000 of collateral each
    novice, pro, holder, other = d.traders[:4]
    broke = to_checksum_address("0x00000000000000000000000000000000000b0b0b")
    unknown = "0x000000000000000000000000000000000000dEaD"
    d.send_all(
        [
            d.tx(ex, "setEducation", [broke, True], d.risk_admin),
            d.tx(ex, "setCertified", [pro, True], d.risk_admin),
        ]
    )
    d.send(d.trade_tx(pro, 0, size_for(d, 0, 49_000), 20))
    d.send(d.trade_tx(pro, 1, size_for(d, 1, 49_000), 20))
    d.send(d.trade_tx(holder, 0, size_for(d, 0, 4_000), 2))
    d.send(d.tx(ex, "setMarketCaps", [2, 1_000 * USDC, 1_000 * USDC], d.risk_admin))
    stack.index()
    stack.publish()
    eth = lambda usd: f"{size_for(d, 1, usd) / 10**18:.6f}"  # noqa: E731

    with ServerThread(stack, explain_rate=100.0, explain_burst=100) as srv:
        _wait_loaded(srv)

        def explain(account: str, market: int, size: str, leverage: int) -> dict[str, Any]:
            r = requests.get(f"{srv.base}/api/explain", params={"account": account, "market": market, "size": size,
                                                                "leverage": leverage}, timeout=10)  # fmt: skip
            assert r.status_code == 200, r.text
            return dict(r.json())

        ok = explain(novice, 1, eth(1_000), 2)
        assert ok["passes"] is True
        cases = [
            (unknown, 1, eth(1_000), 2, "user", "EducationRequired"),
            (novice, 1, eth(1_000), 10, "user", "LeverageTooHigh"),
            (novice, 1, eth(1_000), 0, "user", "InvalidLeverage"),
            (novice, 1, eth(6_000), 2, "user", "OrderTooLarge"),
            (broke, 1, eth(1_000), 3, "user", "InsufficientMargin"),
            (pro, 1, eth(5_000), 20, "user", "PositionCapExceeded"),
            (novice, 2, f"{size_for(d, 2, 2_000) / 10**18:.6f}", 2, "system", "OpenInterestCapExceeded"),
        ]
        for account, market, size, lev, layer, rule in cases:
            got = explain(account, market, size, lev)
            assert (got["passes"], got["layer"], got["rule"]) == (False, layer, rule), (rule, got)
            assert got["link"] == f"/rules#{rule}" and got["detail"] and got["what_to_do"]
        lev = explain(novice, 1, eth(1_000), 10)
        assert lev["detail"] == "your tier is novice, max 3x, you tried 10x"
        assert lev["what_to_do"].startswith(
            "lower the leverage to 3x or less, or trade more to unlock junior (5 trades"
        )

        # market layer: a >10% move trips the circuit breaker (reduce-only); reductions still pass
        answer = contract(stack.w3, "MockAggregator", stack.dep.markets[0].primary).functions.answer().call()
        d.set_price(0, int(answer * 1.2))
        got = explain(other, 0, "0.01", 2)
        assert (got["layer"], got["rule"]) == ("market", "MarketReduceOnly"), got
        size0 = ex.functions.positionOf(holder, 0).call()[0]
        assert explain(holder, 0, f"-{size0 // 2 / 10**18:.6f}", 2)["passes"] is True
        one_k = eth(1_000)
        d.send(d.tx(d.c["OracleHub"], "setPaused", [1, True], d.guardian))
        got = explain(novice, 1, one_k, 2)
        assert (got["layer"], got["rule"]) == ("market", "MarketPaused"), got

        # the rule book has every anchor explain links to
        html = requests.get(f"{srv.base}/rules", timeout=5).text
        for rule in ("EducationRequired", "LeverageTooHigh", "OrderTooLarge", "InvalidLeverage", "InsufficientMargin",
                     "PositionCapExceeded", "OpenInterestCapExceeded", "MarketReduceOnly", "MarketPaused"):  # fmt: skip
            assert f'id="{rule}"' in html, rule


def test_explain_without_its_node_is_a_503(stack: Stack) -> None:
    """The node explain asks is down: after the client's retries, a JSON 503, not a server error."""
    stack.index()
    stack.publish()
    with ServerThread(
        stack, rpc_url="http://127.0.0.1:9", explain_rate=100.0, explain_burst=100, explain_timeout=30.0
    ) as srv:
        _wait_loaded(srv)
        r = requests.get(f"{srv.base}/api/explain", params={"account": stack.driver.traders[0], "market": 0,
                                                            "size": "0.01", "leverage": 2}, timeout=30)  # fmt: skip
        assert r.status_code == 503, r.text
        assert r.json() == {"error": "the chain node is unavailable, retry later", "status": 503}


# ------------------------------------------------------------------------------------ the browser


def test_page_in_headless_chromium(stack: Stack) -> None:
    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed at /usr/bin/chromium: run make browser")
    from playwright.sync_api import sync_playwright

    simulate(stack.w3, stack.dep, "calm", traders=8, seed=7, blocks=4)
    d = stack.driver
    stage_liquidations(d)
    stack.index()
    stack.publish()
    d.set_answers()
    stack.index()
    sid = stack.publish()  # two snapshots: the chart has a line
    with ServerThread(stack) as srv, sync_playwright() as pw:
        _wait_loaded(srv)
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1500})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(srv.base + "/", wait_until="load")
            text = lambda k: page.locator(f'[data-k="{k}"]').first.inner_text()  # noqa: E731
            row = fund_row(stack, sid)
            block = int(text("stamp.block").replace(",", ""))
            assert block == row["block_number"]
            assert text("stamp.hash") == "0x" + bytes(stack.w3.eth.get_block(block)["hash"]).hex()
            fund = contract(stack.w3, "InsuranceFund", stack.dep.address("InsuranceFund"))
            assert text("fund.balance") == fmt.usd(fund.functions.balance().call(block_identifier=block))
            assert text("fund.tpv") == fmt.usd(row["total_position_value"])
            assert text("fund.coverage") == fmt.bps_pct(row["coverage_bps"])
            assert text("fund.penalties24") == fmt.usd(row["income_24h_penalties"])
            assert text("fund.payouts24") == fmt.usd(row["payouts_24h"])
            points = page.locator("#chart-balance polyline").get_attribute("points") or ""
            assert len(points.split()) >= 2
            assert page.locator("table.markets tbody tr").count() == len(stack.dep.markets)

            # a new block + a new snapshot: the numbers change without a reload
            page.evaluate("window.__noReload = 42")
            old_balance = text("fund.balance")
            short = d.c["Exchange"].functions.positionOf(d.traders[3], 1).call()[0]
            d.send(d.trade_tx(d.traders[3], 1, -short // 2, 2))  # a reduction: allowed while reduce-only
            stack.index()
            new = fund_row(stack, stack.publish())
            assert new["balance"] != row["balance"]
            page.wait_for_function(
                "b => document.querySelector('[data-k=\"stamp.block\"]').textContent.replace(/,/g, '') === String(b)",
                arg=new["block_number"], timeout=10_000,
            )  # fmt: skip
            assert text("fund.balance") == fmt.usd(new["balance"]) != old_balance
            assert text("fund.balance_raw") == str(new["balance"])  # the "check it yourself" line too
            assert text("stamp.block_plain") == str(new["block_number"])
            assert page.evaluate("window.__noReload") == 42
            page.wait_for_function(
                "() => document.querySelector('#chart-balance polyline').getAttribute('points').split(' ').length >= 3",
                timeout=10_000,
            )
            assert page.locator('#chart-balance ~ .axis [data-axis="n"]').inner_text() == "3 points"
            assert not [e for e in errors if "Content Security Policy" in e], errors
            out = REPO / "var" / "artifacts"
            out.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out / "page.png"), full_page=True)
            # narrow screens: no horizontal overflow of the page itself
            page.set_viewport_size({"width": 390, "height": 900})
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        finally:
            browser.close()
    if os.environ.get("KEEPER_KEEP_HTML"):
        (REPO / "var" / "artifacts" / "page.json").write_bytes(orjson.dumps(new))
