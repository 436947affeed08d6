# ruff: noqa: E501  (HTML/JS/schema literals read better unwrapped)
"""The public page and API without a chain: formatting, markdown, validation, explain decoding, the rate
limiter, and the hardening middlewares (4xx JSON, generic 500 without internals, security headers)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from eth_abi import encode
from eth_utils import keccak

from keeper.api import format as fmt
from keeper.api import markdown, render
from keeper.api import validate as v
from keeper.api.app import ServerConfig, TokenBuckets, make_app
from keeper.api.explain import RULES, Context, explain_revert
from keeper.api.state import PublicState
from keeper.publisher.calls import decode_error, error_specs
from keeper.publisher.snapshot import downsample, size_band, whale_id
from keeper.store.engine import make_engine
from keeper.store.migrate import upgrade


def err(sig: str, types: list[str], args: list[Any]) -> str:
    return "0x" + (keccak(text=sig)[:4] + encode(types, args)).hex()


# ------------------------------------------------------------------------------------ formatting


def test_money_and_prices_are_exact() -> None:
    assert fmt.usd(500_025_706_284) == "$500,025.70"
    assert fmt.usd(-1) == "-$0.00"
    assert fmt.usd_exact(500_025_706_284) == "500025.706284"
    assert fmt.usd_exact(-1_500_000) == "-1.5"
    assert fmt.price(60_113_196_354_660_000_000_000) == "$60,113.19"
    assert fmt.price(90_198_900_000_000_000_000) == "$90.1989"
    assert fmt.bps_pct(42_120) == "421.20%"
    assert fmt.rate_pct(10**14) == "+0.01000%" and fmt.rate_pct(-(10**14)) == "-0.01000%"
    assert fmt.ratio_pct(1, 3, 1) == "33.3%"
    assert fmt.decimal_str(123_456, 6) == "0.123456"


def test_markdown_is_safe_and_anchored() -> None:
    src = (
        "# Title {#top}\n\nA <script>alert(1)</script> **bold** and *it* `x<y`.\n\n"
        "- **Leverage** (`LeverageTooHigh(tier, max)`): text\n  continued\n- other `LeverageTooHigh`\n\n"
        "| a | b |\n|---|---|\n| 1 | <b>2</b> |\n"
    )
    out, used = markdown.render(src, anchors={"LeverageTooHigh"}, inserts={"top": "<div class=live>L</div>"})
    assert "<script>" not in out and "&lt;script&gt;" in out and "&lt;b&gt;2&lt;/b&gt;" in out
    assert '<h1 id="top">Title</h1><div class=live>L</div>' in out
    assert out.count('id="LeverageTooHigh"') == 1 and "LeverageTooHigh" in used
    assert "<strong>bold</strong>" in out and "<em>it</em>" in out and "<code>x&lt;y</code>" in out
    assert "text continued" in out and "<td>1</td>" in out


def test_rules_page_has_every_anchor() -> None:
    html = render.rules_page(PublicState(31337), poll=3)
    for anchor in ("user-layer", "system-layer", "market-layer", "liquidation", "errors", *RULES):
        assert html.count(f'id="{anchor}"') == 1, anchor


def test_chart_points_scale_into_the_box() -> None:
    pts = [{"t": 0, "balance": 10}, {"t": 50, "balance": 30}, {"t": 100, "balance": 20}]
    line, lo, hi = render.chart_points(pts, "balance")
    xy = [tuple(map(float, p.split(","))) for p in line.split()]
    assert xy[0] == (6.0, 154.0) and xy[1] == (300.0, 6.0) and xy[2] == (594.0, 80.0)
    assert render.chart_points([], "balance") == ("", "", "")


# ------------------------------------------------------------------------------------ validation


def test_address_validation() -> None:
    good = "0x45C9653AF2A9d81AC8aE2085Ed97A6c4F11B9466"
    assert v.address(good) == good
    assert v.address(good.lower()) == good
    assert v.address("0x" + good[2:].upper()) == good
    for bad in (
        "",
        "0x123",
        good[:-1] + "7",
        "45C9653AF2A9d81AC8aE2085Ed97A6c4F11B9466",
        good + "0",
        "0x" + "g" * 40,
    ):
        with pytest.raises(v.BadInput):
            v.address(bad)


def test_numbers_validation() -> None:
    assert v.integer(None, "p", low=1, high=10, default=3) == 3
    assert v.integer("10", "p", low=1, high=10) == 10
    for bad in ("", "0", "11", "-1", "1e3", "1.0", " 1", "9" * 30):
        with pytest.raises(v.BadInput):
            v.integer(bad, "p", low=1, high=10)
    assert v.size_wad("1.5") == 15 * 10**17
    assert v.size_wad("-0.000000000000000001") == -1
    assert v.size_wad("0") == 0
    for bad in ("", "1.", ".5", "1e18", "abc", "1" * 13, "0." + "1" * 19, "--1"):
        with pytest.raises(v.BadInput):
            v.size_wad(bad)


# ------------------------------------------------------------------------------------ explain


def test_every_custom_error_is_explained() -> None:
    names = {s.name for s in error_specs().values()}
    assert "OracleInvalid" in names and "LeverageTooHigh" in names
    assert names <= set(RULES)


def test_explain_decodes_the_revert() -> None:
    data = err("LeverageTooHigh(uint8,uint256,uint256)", ["uint8", "uint256", "uint256"], [0, 3, 10])
    assert decode_error(data) == ("LeverageTooHigh", {"tier": 0, "maxLeverage": 3, "requested": 10})
    ctx = Context(tier=0, trades=2, tiers={1: {"max_leverage": 5, "max_order_notional": 20_000 * 10**6}})
    got = explain_revert(data, ctx)
    assert got == {
        "passes": False,
        "layer": "user",
        "rule": "LeverageTooHigh",
        "detail": "your tier is novice, max 3x, you tried 10x",
        "what_to_do": "lower the leverage to 3x or less, or trade more to unlock junior (5 trades, 3 to go), "
        "which allows 5x",
        "link": "/rules#LeverageTooHigh",
        "args": {"tier": "0", "maxLeverage": "3", "requested": "10"},
    }
    oi = err("OpenInterestCapExceeded(uint256,bool,uint256,uint256)", ["uint256", "bool", "uint256", "uint256"],
             [2, True, 10**9, 2 * 10**9])  # fmt: skip
    got = explain_revert(oi, Context(symbols={2: "SOL"}))
    assert (got["layer"], got["rule"]) == ("system", "OpenInterestCapExceeded")
    assert got["detail"] == "SOL long open interest would be $2,000.00, the cap is $1,000.00"
    oracle = err("OracleInvalid(uint256,uint8,uint8)", ["uint256", "uint8", "uint8"], [1, 1, 5])
    got = explain_revert(oracle, Context(symbols={1: "ETH"}))
    assert got["layer"] == "market" and got["detail"] == "the secondary feed of ETH is rejected: stale"
    for junk in (
        None,
        "0x",
        "0x1234",
        "0xzz",
        err("Nope()", [], []),
        "0x" + keccak(text="LeverageTooHigh(uint8,uint256,uint256)")[:4].hex(),
    ):
        assert explain_revert(junk, Context())["passes"] is False


# ------------------------------------------------------------------------------------ publisher helpers


def test_whale_ids_and_bands() -> None:
    a = "0x45C9653AF2A9d81AC8aE2085Ed97A6c4F11B9466"
    assert whale_id(a, "s") == whale_id(a.lower(), "s") != whale_id(a, "t")
    assert len(whale_id(a, "s")) == 14 and a[2:10].lower() not in whale_id(a, "s")
    assert [size_band(x * 10**6) for x in (0, 9_999, 10_000, 75_000, 100_000, 5_000_000)] == [
        "<10k",
        "<10k",
        "10k-50k",
        "50k-100k",
        "100k-1M",
        ">=1M",
    ]


def test_downsample_keeps_a_day_then_hourly(tmp_path: Path) -> None:
    from sqlalchemy import insert, select

    from keeper.publisher.models import FUND_SNAPSHOTS, MARKET_SNAPSHOTS

    engine = make_engine(f"sqlite:///{tmp_path / 'd.db'}")
    upgrade(engine)
    now = 10 * 86_400
    rows = [now - i * 600 for i in range(0, 6 * 24 * 3)]  # every 10 minutes for 3 days
    base = dict(chain_id=1, block_hash="0x", read_at=0.0, balance=1, total_fee_income=0, total_penalty_income=0,
                total_donations=0, total_payouts=0, total_position_value=0, complete=True, params={},
                income_24h_fees=0, income_24h_penalties=0, payouts_24h=0, bad_debt_24h=0, socialized_24h=0)  # fmt: skip
    with engine.begin() as conn:
        for i, ts in enumerate(sorted(rows)):
            sid = conn.execute(
                insert(FUND_SNAPSHOTS).values(block_number=i, block_timestamp=ts, **base)
            ).inserted_primary_key[0]
            conn.execute(insert(MARKET_SNAPSHOTS).values(
                snapshot_id=sid, chain_id=1, block_number=i, market_id=0, symbol="X", mark_ok=True, mark_price=1,
                oracle_status=0, primary_price=0, secondary_price=0, adl_ok=True, adl_trader_pnl=0,
                adl_vault_assets=0, adl_active=False, primary_reason=0, secondary_reason=0, mmr_bps=200, long_size=0, short_size=0,
                long_notional=0, short_notional=0, long_oi_cap=0, short_oi_cap=0, funding_index=0,
                last_funding_rate=0, last_funding_period=0, next_funding_rate=0, next_funding_due=0))  # fmt: skip
        deleted = downsample(conn, 1, now)
        again = downsample(conn, 1, now)
        ts = [r[0] for r in conn.execute(select(FUND_SNAPSHOTS.c.block_timestamp))]
        n_markets = len(conn.execute(select(MARKET_SNAPSHOTS.c.id)).all())
    recent = [t for t in ts if t >= now - 86_400]
    old = [t for t in ts if t < now - 86_400]
    assert len(recent) == 6 * 24 + 1 and deleted > 0 and again == 0  # (now - 24 h) itself is kept
    assert len({t // 3600 for t in old}) == len(old)  # one per hour
    assert n_markets == len(ts)
    engine.dispose()


# ------------------------------------------------------------------------------------ the app


def _client(engine: Any, **cfg: Any) -> TestClient:
    return TestClient(TestServer(make_app(engine, ServerConfig(chain_id=31337, **cfg))))


def test_token_bucket() -> None:
    now = [0.0]
    b = TokenBuckets(rate=1.0, burst=2, max_keys=2, clock=lambda: now[0])
    assert b.take("a") == 0 and b.take("a") == 0 and b.take("a") == pytest.approx(1.0)
    now[0] = 1.0
    assert b.take("a") == 0
    b.take("b"), b.take("c")
    assert len(b._b) == 2  # LRU-bounded


def test_hardening(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'e.db'}")
    upgrade(engine)

    async def main() -> None:
        async with _client(engine, rate=1000.0, burst=1000) as c:
            r = await c.get("/")
            assert r.status == 200
            for h, val in (("X-Frame-Options", "DENY"), ("X-Content-Type-Options", "nosniff"),
                           ("Referrer-Policy", "no-referrer")):  # fmt: skip
                assert r.headers[h] == val
            assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
            assert "No snapshot" in await r.text()
            r = await c.get("/api/insurance-fund")
            assert r.status == 503 and (await r.json())["error"]
            r = await c.get("/api/liquidations?page=0")
            assert r.status == 400 and (await r.json()) == {
                "error": "page: must be between 1 and 1000000",
                "status": 400,
            }
            r = await c.get("/api/liquidations?bogus=1")
            assert r.status == 400
            r = await c.get("/api/nothing")
            assert r.status == 404 and (await r.json())["status"] == 404
            r = await c.post("/api/insurance-fund")
            assert r.status == 405 and "error" in await r.json()
            r = await c.get("/healthz")
            assert r.status == 503 and "no snapshot published yet" in (await r.json())["problems"]
            r = await c.get("/static/../config.py")
            assert r.status == 404
            r = await c.get("/static/app.js")
            assert r.status == 200 and "X-Frame-Options" in r.headers

        # a database that breaks: a generic 500, no internals in the body
        from sqlalchemy import text

        with engine.begin() as conn:
            conn.execute(text("DROP TABLE liquidations"))
        async with _client(engine) as c:
            r = await c.get("/api/liquidations")
            body = await r.text()
            assert r.status == 500 and body == '{"error":"internal error","status":500}'
            r = await c.get("/account/0x45C9653AF2A9d81AC8aE2085Ed97A6c4F11B9466")
            assert r.status in (200, 500) and "Traceback" not in await r.text()

        async with _client(engine, rate=1.0, burst=3) as c:
            codes = [(await c.get("/rules")).status for _ in range(5)]
            assert codes[:3] == [200, 200, 200] and codes[-1] == 429
            r = await c.get("/rules")
            assert r.headers["Retry-After"] == "1"
            assert (await c.get("/healthz")).status == 503  # not rate limited

    asyncio.run(main())
    engine.dispose()
