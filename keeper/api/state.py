"""What the public API serves, read from the database only (never from the chain).

:class:`PublicState` is refreshed from the database every ``server.refresh_interval`` seconds by the
app; requests read it from memory. Paged and per-account queries go to the database (in a thread).
The ``*_json`` builders turn rows into the API's documents: exact integers as decimal strings (``raw``
in chain units, ``usd`` exact dollars) plus a ``display`` map of preformatted strings keyed like the
page's ``data-k`` attributes, so that the page's script updates the numbers in place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select

from keeper.api import format as fmt
from keeper.publisher.models import FUND_SNAPSHOTS, MARKET_SNAPSHOTS, WHALE_SNAPSHOTS
from keeper.risk import math as rm
from keeper.risk.anomaly import recent_flags
from keeper.store.models import (
    ACCOUNTS,
    CHECKPOINTS,
    LIQUIDATIONS,
    MARKETS,
    POSITIONS,
    RISK_PARAMS,
    TIER_LIMITS,
)

RANGES = {"hour": 3_600, "day": 86_400, "week": 7 * 86_400}
MAX_POINTS = 240


# ------------------------------------------------------------------------------------ queries


def latest_snapshot(conn: Any, chain_id: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    fs = FUND_SNAPSHOTS.c
    row = (
        conn.execute(select(FUND_SNAPSHOTS).where(fs.chain_id == chain_id).order_by(fs.id.desc()).limit(1))
        .mappings()
        .first()
    )
    if row is None:
        return None, []
    ms = MARKET_SNAPSHOTS.c
    markets = (
        conn.execute(select(MARKET_SNAPSHOTS).where(ms.snapshot_id == row["id"]).order_by(ms.market_id))
        .mappings()
        .all()
    )
    return dict(row), [dict(m) for m in markets]


def history(conn: Any, chain_id: int, since_ts: int) -> list[dict[str, Any]]:
    fs = FUND_SNAPSHOTS.c
    rows = conn.execute(
        select(fs.block_number, fs.block_timestamp, fs.balance, fs.coverage_bps, fs.total_position_value)
        .where(fs.chain_id == chain_id, fs.block_timestamp >= since_ts)
        .order_by(fs.block_timestamp, fs.id)
    ).all()
    points = [
        {"block_number": b, "t": t, "balance": bal, "coverage_bps": cov, "total_position_value": tpv}
        for b, t, bal, cov, tpv in rows
    ]
    if len(points) > MAX_POINTS:  # evenly thinned for the chart; the last point always kept
        step = len(points) / MAX_POINTS
        points = [points[int(i * step)] for i in range(MAX_POINTS - 1)] + [points[-1]]
    return points


def checkpoint(conn: Any, chain_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        select(CHECKPOINTS.c.block_number, CHECKPOINTS.c.block_hash).where(CHECKPOINTS.c.chain_id == chain_id)
    ).first()
    return {"block_number": int(row[0]), "block_hash": row[1]} if row else None


def liquidations(conn: Any, chain_id: int, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    lq = LIQUIDATIONS.c
    total = int(conn.execute(select(func.count()).select_from(LIQUIDATIONS).where(lq.chain_id == chain_id))
                .scalar_one())  # fmt: skip
    rows = (
        conn.execute(
            select(LIQUIDATIONS)
            .where(lq.chain_id == chain_id)
            .order_by(lq.block_number.desc(), lq.log_index.desc())
            .offset(offset)
            .limit(limit)
        )
        .mappings()
        .all()
    )
    return total, [dict(r) for r in rows]


def latest_whales(conn: Any, chain_id: int) -> list[dict[str, Any]]:
    ws = WHALE_SNAPSHOTS.c
    last = conn.execute(select(func.max(ws.taken_at)).where(ws.chain_id == chain_id)).scalar()
    if last is None:
        return []
    rows = (
        conn.execute(
            select(WHALE_SNAPSHOTS)
            .where(ws.chain_id == chain_id, ws.taken_at == last)
            .order_by(ws.market_id, ws.rank)
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows]


def rule_params(conn: Any, chain_id: int) -> tuple[dict[str, int] | None, dict[int, dict[str, int]]]:
    rp = conn.execute(select(RISK_PARAMS).where(RISK_PARAMS.c.chain_id == chain_id)).mappings().first()
    tiers = {
        int(r["tier"]): {"max_leverage": r["max_leverage"], "max_order_notional": r["max_order_notional"]}
        for r in conn.execute(select(TIER_LIMITS).where(TIER_LIMITS.c.chain_id == chain_id)).mappings()
    }
    return (dict(rp) if rp else None), tiers


def account(conn: Any, chain_id: int, address: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    row = (
        conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.chain_id == chain_id, ACCOUNTS.c.address == address))
        .mappings()
        .first()
    )
    pos = (
        conn.execute(
            select(POSITIONS).where(POSITIONS.c.chain_id == chain_id, POSITIONS.c.account == address)
        )
        .mappings()
        .all()
    )
    return (dict(row) if row else None), [dict(p) for p in pos if p["size"] != 0]


def market_mmr(conn: Any, chain_id: int) -> dict[int, int]:
    return {
        int(m): int(v or 0)
        for m, v in conn.execute(
            select(MARKETS.c.market_id, MARKETS.c.mmr_bps).where(MARKETS.c.chain_id == chain_id)
        )
    }


# ------------------------------------------------------------------------------------ the state


@dataclass
class PublicState:
    chain_id: int
    fund: dict[str, Any] | None = None
    markets: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    recent_liquidations: list[dict[str, Any]] = field(default_factory=list)
    liquidations_total: int = 0
    whales: list[dict[str, Any]] = field(default_factory=list)
    #: The anomaly watch's latest flags (newest first) and their count.
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    anomalies_total: int = 0
    index: dict[str, Any] | None = None
    risk_params: dict[str, int] | None = None
    tier_limits: dict[int, dict[str, int]] = field(default_factory=dict)
    loaded_at: float = 0.0
    symbols: dict[int, str] = field(default_factory=dict)
    #: The InsuranceFund's address, for the page's "check it yourself" line.
    fund_address: str | None = None
    #: Bumped by every :meth:`refresh`: the server's rendered-response cache is keyed on it.
    version: int = 0

    def refresh(self, engine: Engine) -> None:
        """Reloads everything from the database (one read transaction)."""
        with engine.connect() as conn:
            fund, markets = latest_snapshot(conn, self.chain_id)
            changed = fund is None or self.fund is None or fund["id"] != self.fund["id"]
            self.fund, self.markets = fund, markets
            for m in markets:
                self.symbols[int(m["market_id"])] = m["symbol"]
            if fund is not None and changed:
                self.history = {
                    k: history(conn, self.chain_id, fund["block_timestamp"] - s) for k, s in RANGES.items()
                }
                self.whales = latest_whales(conn, self.chain_id)
            self.liquidations_total, self.recent_liquidations = liquidations(conn, self.chain_id, 0, 10)
            self.anomalies_total, self.anomalies = recent_flags(conn, self.chain_id, 0, 10)
            self.index = checkpoint(conn, self.chain_id)
            self.risk_params, self.tier_limits = rule_params(conn, self.chain_id)
        self.loaded_at = time.time()
        self.version += 1

    # ---------------------------------------------------------------- live rule values

    def live_params(self) -> dict[str, int]:
        """Risk parameters: the indexed RiskParamsSet if any, else as read by the latest snapshot."""
        if self.risk_params:
            return {k: int(v) for k, v in self.risk_params.items() if k != "chain_id"}
        if self.fund:
            return {k: int(v) for k, v in self.fund["params"].get("params", {}).items()}
        return {}

    def live_tiers(self) -> list[dict[str, Any]]:
        read = {int(t["tier"]): t for t in (self.fund or {}).get("params", {}).get("tiers", [])}
        out = []
        for t in range(4):
            src = self.tier_limits.get(t) or read.get(t)
            if src is None:
                continue
            out.append({"tier": t, "name": fmt.tier_name(t), "max_leverage": int(src["max_leverage"]),
                        "max_order_notional": int(src["max_order_notional"])})  # fmt: skip
        return out


# ------------------------------------------------------------------------------------ documents


def stamp_json(fund: dict[str, Any], now: float, stale_after: float) -> dict[str, Any]:
    age = max(0.0, now - float(fund["read_at"]))
    return {
        "block_number": fund["block_number"],
        "block_hash": fund["block_hash"],
        "block_timestamp": fund["block_timestamp"],
        "block_time": fmt.iso(fund["block_timestamp"]),
        "read_at": fmt.iso(fund["read_at"]),
        "age_seconds": round(age, 1),
        "stale": age > stale_after,
    }


def money(units: int | None) -> dict[str, str] | None:
    return None if units is None else {"raw": str(units), "usd": fmt.usd_exact(units)}


def fund_display(fund: dict[str, Any], stamp: dict[str, Any]) -> dict[str, str]:
    return {
        "fund.balance": fmt.usd(fund["balance"]),
        "fund.tpv": fmt.usd(fund["total_position_value"]),
        "fund.coverage": fmt.bps_pct(fund["coverage_bps"])
        if fund["coverage_bps"] is not None
        else "no open positions",
        "fund.fees24": fmt.usd(fund["income_24h_fees"]),
        "fund.penalties24": fmt.usd(fund["income_24h_penalties"]),
        "fund.income24": fmt.usd(fund["income_24h_fees"] + fund["income_24h_penalties"]),
        "fund.payouts24": fmt.usd(fund["payouts_24h"]),
        "fund.baddebt24": fmt.usd(fund["bad_debt_24h"]),
        "fund.socialized24": fmt.usd(fund["socialized_24h"]),
        "stamp.block": f"{fund['block_number']:,}",
        "stamp.block_plain": str(fund["block_number"]),
        "fund.balance_raw": str(fund["balance"]),
        "fund.window_from": fmt.utc(fund["block_timestamp"] - 86_400),
        "fund.window_to": fmt.utc(fund["block_timestamp"]),
        "fund.index_block": str(fund["index_block"]) if fund["index_block"] is not None else "none",
        "stamp.hash": fund["block_hash"],
        "stamp.time": fmt.utc(fund["block_timestamp"]),
        "stamp.age": f"{stamp['age_seconds']:.0f} s ago",
        "stamp.stale": "STALE" if stamp["stale"] else "live",
    }


def fund_json(
    fund: dict[str, Any], now: float, stale_after: float, index: dict[str, Any] | None
) -> dict[str, Any]:
    stamp = stamp_json(fund, now, stale_after)
    cov = fund["coverage_bps"]
    return {
        "stamp": stamp,
        "balance": money(fund["balance"]),
        "total_position_value": money(fund["total_position_value"]),
        "coverage": None if cov is None else {"bps": cov, "percent": fmt.bps_pct(cov).rstrip("%")},
        "complete": fund["complete"],
        "totals": {
            "fee_income": money(fund["total_fee_income"]),
            "penalty_income": money(fund["total_penalty_income"]),
            "donations": money(fund["total_donations"]),
            "payouts": money(fund["total_payouts"]),
        },
        "last_24h": {
            "window": "block time (t-86400, t] of the stamped block, events up to index_block",
            "income_fees": money(fund["income_24h_fees"]),
            "income_liquidations": money(fund["income_24h_penalties"]),
            "payouts_bad_debt": money(fund["payouts_24h"]),
            "bad_debt": money(fund["bad_debt_24h"]),
            "socialized": money(fund["socialized_24h"]),
            "index_block": fund["index_block"],
        },
        "index": index,
        "display": fund_display(fund, stamp),
    }


def breaker_label(status: int) -> str:
    return {0: "normal", 1: "tripped: reduce-only", 2: "paused"}.get(status, f"status {status}")


def market_json(m: dict[str, Any]) -> dict[str, Any]:
    k = f"m.{m['market_id']}."
    long_n, short_n = m["long_notional"], m["short_notional"]
    return {
        "market_id": m["market_id"],
        "symbol": m["symbol"],
        "mark_price": {"raw": str(m["mark_price"]), "ok": m["mark_ok"]},
        "oracle": {
            "status": fmt.ORACLE_STATUS[m["oracle_status"]]
            if m["oracle_status"] < 3
            else str(m["oracle_status"]),
            "primary": {"price": str(m["primary_price"]), "reason": fmt.ORACLE_REASONS[m["primary_reason"]]},
            "secondary": {
                "price": str(m["secondary_price"]),
                "reason": fmt.ORACLE_REASONS[m["secondary_reason"]],
            },
        },
        "circuit_breaker": breaker_label(m["oracle_status"]),
        "open_interest": {
            "long_size": str(m["long_size"]),
            "short_size": str(m["short_size"]),
            "long_notional": money(long_n),
            "short_notional": money(short_n),
            "long_cap": money(m["long_oi_cap"]),
            "short_cap": money(m["short_oi_cap"]),
        },
        "funding": {
            "index": str(m["funding_index"]),
            "current_rate_wad": str(m["last_funding_rate"]),
            "predicted_rate_wad": str(m["next_funding_rate"]),
            "next_due": m["next_funding_due"],
            "period": m["last_funding_period"],
        },
        "adl": {
            "active": m["adl_active"],
            "trader_pnl": money(m["adl_trader_pnl"]) if m["adl_ok"] else None,
            "vault_assets": money(m["adl_vault_assets"]) if m["adl_ok"] else None,
        },
        "mmr_bps": m["mmr_bps"],
        "display": {
            k + "mark": fmt.price(m["mark_price"]) if m["mark_ok"] else "unavailable",
            k + "oracle": fmt.ORACLE_STATUS[m["oracle_status"]] if m["oracle_status"] < 3 else "?",
            k + "breaker": breaker_label(m["oracle_status"]),
            k + "oi_long": fmt.usd(long_n, 0),
            k + "oi_short": fmt.usd(short_n, 0),
            k + "cap_long": fmt.usd(m["long_oi_cap"], 0),
            k + "cap_short": fmt.usd(m["short_oi_cap"], 0),
            k + "use_long": fmt.ratio_pct(long_n, m["long_oi_cap"], 1),
            k + "use_short": fmt.ratio_pct(short_n, m["short_oi_cap"], 1),
            k + "funding_now": fmt.rate_pct(m["last_funding_rate"]) + "/h",
            k + "funding_next": fmt.rate_pct(m["next_funding_rate"]) + "/h",
            k + "funding_due": fmt.utc(m["next_funding_due"]),
            k + "adl": "active" if m["adl_active"] else "off",
        },
    }


def markets_json(
    fund: dict[str, Any] | None, markets: list[dict[str, Any]], now: float, stale_after: float
) -> dict[str, Any]:
    return {
        "stamp": stamp_json(fund, now, stale_after) if fund else None,
        "markets": [market_json(m) for m in markets],
    }


def liquidation_json(r: dict[str, Any], symbols: dict[int, str]) -> dict[str, Any]:
    return {
        "block_number": r["block_number"],
        "block_hash": r["block_hash"],
        "block_timestamp": r["block_timestamp"],
        "tx_hash": r["tx_hash"],
        "log_index": r["log_index"],
        "account": r["account"],
        "market_id": r["market_id"],
        "symbol": symbols.get(int(r["market_id"])),
        "liquidator": r["liquidator"],
        "size_closed": str(r["size_closed"]),
        "price": str(r["price"]),
        "penalty": money(r["penalty"]),
        "keeper_reward": money(r["keeper_reward"]),
        "fund_share": money(r["fund_share"]),
        "full": r["full"],
    }


ANOMALY_RULES = {
    "oi_share": "one account took a large share of a market's open interest in a short window",
    "open_close_loop": "rapid open/close loops of one account in one market",
    "funding_source": "many new accounts first funded from one address",
    "oracle_jump": "an oracle move far beyond the market's recent volatility",
}


def anomaly_json(r: dict[str, Any], symbols: dict[int, str]) -> dict[str, Any]:
    m = r.get("market_id")
    return {
        "id": int(r["id"]),
        "rule": r["rule"],
        "rule_text": ANOMALY_RULES.get(r["rule"], r["rule"]),
        "subject": r["subject"],
        "account": r["account"],
        "market_id": None if m is None else int(m),
        "market": None if m is None else symbols.get(int(m), str(m)),
        "block_number": int(r["block_number"]),
        "detail": r["detail"],
        "created": float(r["created"]),
    }


def whale_json(rows: list[dict[str, Any]], symbols: dict[int, str]) -> dict[str, Any]:
    if not rows:
        return {"taken_at": None, "block_number": None, "markets": []}
    by_market: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_market.setdefault(int(r["market_id"]), []).append(r)
    markets = []
    for mid, rs in sorted(by_market.items()):
        bands: dict[str, dict[str, int]] = {}
        for r in rs:
            b = bands.setdefault(r["band"], {"long": 0, "short": 0, "count": 0})
            b[r["side"]] += r["notional"]
            b["count"] += 1
        markets.append(
            {
                "market_id": mid,
                "symbol": symbols.get(mid),
                "positions": [
                    {"rank": r["rank"], "id": r["account_id"], "side": r["side"], "size": str(r["size"]),
                     "notional": money(r["notional"]), "share_bps": r["share_bps"], "band": r["band"]}
                    for r in rs
                ],
                "bands": {k: {"long": money(v["long"]), "short": money(v["short"]), "count": v["count"]}
                          for k, v in bands.items()},
                "long_share_bps": sum(r["share_bps"] for r in rs if r["side"] == "long"),
                "short_share_bps": sum(r["share_bps"] for r in rs if r["side"] == "short"),
            }
        )  # fmt: skip
    return {"taken_at": rows[0]["taken_at"], "taken_at_time": fmt.iso(rows[0]["taken_at"]),
            "block_number": rows[0]["block_number"], "markets": markets}  # fmt: skip


def account_json(
    address: str,
    acct: dict[str, Any] | None,
    positions: list[dict[str, Any]],
    state: PublicState,
    mmr: dict[int, int],
) -> dict[str, Any]:
    """Margin ratio, warning tier, liquidation prices (keeper.risk.math) at the latest snapshot's marks."""
    marks = {int(m["market_id"]): m["mark_price"] for m in state.markets if m["mark_ok"]}
    findex = {int(m["market_id"]): m["funding_index"] for m in state.markets}
    mmrs = {**mmr, **{int(m["market_id"]): int(m["mmr_bps"]) for m in state.markets}}
    params = state.live_params()
    liq_bps = params.get("liquidation_bps", 11_000)
    collateral = acct["collateral"] if acct else 0
    tier = acct["tier"] if acct else 0
    tiers = {t["tier"]: t for t in state.live_tiers()}
    pos_states = {
        int(p["market_id"]): rm.PositionState(p["size"], p["entry_price"], p["entry_funding_index"])
        for p in positions
    }
    priced = all(m in marks for m in pos_states)
    out: dict[str, Any] = {
        "address": address,
        "known": acct is not None,
        "stamp": stamp_json(state.fund, time.time(), 1e18) if state.fund else None,
        "collateral": money(collateral),
        "trades": acct["trades"] if acct else 0,
        "tier": fmt.tier_name(tier),
        "educated": bool(acct and acct["educated"]),
        "certified": bool(acct and acct["certified"]),
        "limits": (
            {
                "max_leverage": tiers[tier]["max_leverage"],
                "max_order_notional": money(tiers[tier]["max_order_notional"]),
                "account_notional_cap": money(params.get("account_notional_cap")),
            }
            if tier in tiers
            else None
        ),  # fmt: skip
        "positions": [],
    }
    if not priced:
        out["risk"] = None
        out["note"] = "a mark price is unavailable: margin figures cannot be computed"
        for mid, ps in pos_states.items():
            out["positions"].append({"market_id": mid, "symbol": state.symbols.get(mid), "size": str(ps.size),
                                     "entry_price": str(ps.entry_price)})  # fmt: skip
        return out
    risk = rm.account_risk(collateral, pos_states, marks, findex, mmrs)
    tier_w = rm.warning_tier(risk.value, risk.maintenance_margin)
    mr = risk.margin_ratio_bps
    out["risk"] = {
        "account_value": money(risk.value),
        "maintenance_margin": money(risk.maintenance_margin),
        "notional": money(risk.notional),
        "margin_ratio_bps": None if mr == rm.UINT256_MAX else mr,
        "warning": fmt.WARNING_NAMES[int(tier_w)],
        "liquidatable": risk.is_liquidatable(liq_bps),
    }
    for mid, ps in sorted(pos_states.items()):
        mark = marks[mid]
        rest_value = risk.value - rm.pnl(ps.size, ps.entry_price, mark)
        rest_mm = risk.maintenance_margin - rm.maintenance_margin(ps.size, mark, mmrs[mid])
        lp = rm.liquidation_price(ps.size, ps.entry_price, rest_value, rest_mm, mmrs[mid], liq_bps)
        out["positions"].append(
            {
                "market_id": mid,
                "symbol": state.symbols.get(mid),
                "side": "long" if ps.size > 0 else "short",
                "size": str(ps.size),
                "entry_price": str(ps.entry_price),
                "mark_price": str(mark),
                "notional": money(rm.notional(ps.size, mark)),
                "unrealized_pnl": money(rm.pnl(ps.size, ps.entry_price, mark)),
                "liquidation_price": str(lp) if lp else None,
            }
        )
    return out
