"""Funding: settle every market as soon as the contract allows it, and the keeper's own funding figures.

**Settlement** (:class:`FundingSettler`). ``Exchange.settleFunding(m)`` succeeds once per hour-aligned
period: when ``block.timestamp // fundingPeriod > marketState(m).lastFundingPeriod``. "Already settled" is
always read from the chain (``marketState(m).lastFundingPeriod``), never from memory, so a restart or a
rival keeper that settled first cannot make us send twice: the due check uses chain state, the
transaction manager's ``eth_call`` at ``pending`` sees our own (or anyone's) settlement still in the pool,
and a :class:`SimulationReverted` carrying ``FundingNotDue`` is a no-op (someone else did it). Funding
signs on its **own lane** (its own key) so a stuck funding transaction never holds a liquidation's nonce.
Lateness (chain seconds from ``dueAt`` to the block that mined our settlement) goes to
``keeper_funding_lateness_seconds``.

**Figures** (:func:`update_figures`). From the indexed state only (``funding_settlements``, ``markets``,
``events``), with :mod:`keeper.risk.math`: the keeper replays every settlement, re-deriving the rate from
the long/short sizes and the index from its own previous index, and checks both against the contract's
(``matches``). It then predicts the next settlement: rate from the current open interest, index from the
latest mark, due time ``(lastFundingPeriod + 1) · period`` in chain time. One row per market in
``funding_figures`` for the page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak
from sqlalchemy import BigInteger, Engine, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, SQLModel

from keeper.chain.rpc import RpcClient, RpcError
from keeper.executor.txmanager import SimulationReverted, TxHandle, TxManager
from keeper.risk import math as rm
from keeper.store.engine import for_writes
from keeper.store.models import EVENTS, FUNDING_SETTLEMENTS, MARKETS, RISK_PARAMS, big, table_of

__all__ = [
    "ExchangeViews",
    "FundingFigureRow",
    "FUNDING_FIGURES",
    "FundingSettler",
    "SettleResult",
    "MarketFunding",
    "RiskParams",
    "update_figures",
    "load_figures",
    "selector",
    "FUNDING_NOT_DUE",
]

log = logging.getLogger(__name__)


def selector(signature: str) -> str:
    return "0x" + keccak(text=signature)[:4].hex()


FUNDING_NOT_DUE = selector("FundingNotDue(uint256,uint256)")
DEFAULT_FUNDING_PERIOD = 3_600
DEFAULT_MAX_RATE_WAD = 10**14  # 0.01 % an hour


# ------------------------------------------------------------------------------------------ views


@dataclass(frozen=True)
class RiskParams:
    max_funding_rate_wad: int
    funding_period: int
    adl_trigger_bps: int
    adl_target_bps: int


@dataclass(frozen=True)
class MarketFunding:
    """``marketState(m)`` plus the chain time it was read at."""

    market_id: int
    long_size: int
    short_size: int
    long_cost: int
    short_cost: int
    funding_index: int
    last_funding_period: int
    last_funding_rate: int
    adl_active: bool


_MARKET_STATE_TYPES = ["uint256", "uint256", "uint256", "uint256", "int256", "uint256", "int256", "bool"]


class ExchangeViews:
    """The few Exchange/OracleHub views funding and ADL need, through the keeper's async RpcClient."""

    def __init__(self, rpc: RpcClient, exchange: str, oracle: str | None = None) -> None:
        self.rpc, self.exchange, self.oracle = rpc, exchange, oracle

    async def _call(self, to: str, sig: str, types: Sequence[str], args: Sequence[Any], block: str) -> str:
        data = selector(sig) + (abi_encode(list(types), list(args)).hex() if types else "")
        return str(await self.rpc.call("eth_call", [{"to": to, "data": data}, block]))

    async def head(self) -> tuple[int, int]:
        """(latest block number, its timestamp): the keeper's clock is chain time."""
        b = await self.rpc.call("eth_getBlockByNumber", ["latest", False])
        return int(b["number"], 16), int(b["timestamp"], 16)

    async def market_count(self, block: str = "latest") -> int:
        out = await self._call(self.exchange, "marketCount()", [], [], block)
        return int(out, 16)

    async def market_state(self, m: int, block: str = "latest") -> MarketFunding:
        out = await self._call(self.exchange, "marketState(uint256)", ["uint256"], [m], block)
        v = abi_decode(_MARKET_STATE_TYPES, bytes.fromhex(out[2:]))
        return MarketFunding(m, *v)

    async def params(self, block: str = "latest") -> RiskParams:
        out = await self._call(self.exchange, "params()", [], [], block)
        v = abi_decode(["uint256"] * 12, bytes.fromhex(out[2:]))
        return RiskParams(
            max_funding_rate_wad=v[8], funding_period=v[9], adl_trigger_bps=v[6], adl_target_bps=v[7]
        )

    async def next_funding(self, m: int, block: str = "latest") -> tuple[int, int]:
        out = await self._call(self.exchange, "nextFunding(uint256)", ["uint256"], [m], block)
        rate, due = abi_decode(["int256", "uint256"], bytes.fromhex(out[2:]))
        return int(rate), int(due)

    async def adl_state(self, m: int, block: str = "latest") -> tuple[int, int, bool]:
        out = await self._call(self.exchange, "adlState(uint256)", ["uint256"], [m], block)
        pnl, assets, active = abi_decode(["int256", "uint256", "bool"], bytes.fromhex(out[2:]))
        return int(pnl), int(assets), bool(active)

    async def mark_price(self, m: int, block: str = "latest") -> int:
        assert self.oracle is not None, "mark_price needs the OracleHub address"
        out = await self._call(self.oracle, "markPrice(uint256)", ["uint256"], [m], block)
        return int(out, 16)


def settle_calldata(m: int) -> str:
    return selector("settleFunding(uint256)") + abi_encode(["uint256"], [m]).hex()


# ------------------------------------------------------------------------------------- settlement


@dataclass
class SettleResult:
    """What one pass did for one market: ``not_due`` | ``sent`` | ``pending`` | ``settled_by_other`` |
    ``error``."""

    market_id: int
    action: str
    due_at: int
    chain_time: int
    handle: TxHandle | None = None
    detail: str = ""


@dataclass
class _InFlight:
    handle: TxHandle
    period: int
    due_at: int


@dataclass
class FundingSettler:
    """Settles due markets through its own :class:`TxManager` (lane ``funding``)."""

    views: ExchangeViews
    txm: TxManager | None  # None: dry run
    markets: Sequence[int]
    #: Seconds of chain time before ``dueAt`` at which a settlement may already be sent: the next block's
    #: timestamp is later than the head's, so on a real chain 0..block-time of lead lands in the first
    #: block that allows it (the simulation at ``pending`` decides; a too-early one is a no-op).
    lead_seconds: int = 0
    metrics: Any = None
    on_settled: Callable[[int, int, int], Any] | None = None  # (market, period, lateness seconds)
    dry_run: bool = False
    _in_flight: dict[int, _InFlight] = field(default_factory=dict)
    stats: dict[str, int] = field(
        default_factory=lambda: {"sent": 0, "mined": 0, "reverted": 0, "settled_by_other": 0, "errors": 0}
    )

    async def run_once(self, params: RiskParams | None = None) -> list[SettleResult]:
        """One pass at the current chain time: resolve in-flight settlements, send the due ones."""
        params = params or await self.views.params()
        head, now = await self.views.head()
        if self.txm is not None:
            await self.txm.tick(head)
            self._adopt()
        await self._collect()
        results = []
        for m in self.markets:
            results.append(await self._one(m, now, params))
        return results

    def _adopt(self) -> None:
        """Takes over our unresolved settlements from the journal (after a restart: recovered handles), so
        that they are awaited, not re-sent, and their lateness is still measured."""
        assert self.txm is not None
        for h in self.txm.handles():
            parts = h.purpose.split(":")
            if len(parts) != 4 or parts[0] != "funding":
                continue
            m, period, due_at = int(parts[1]), int(parts[2]), int(parts[3])
            if m not in self._in_flight:
                self._in_flight[m] = _InFlight(h, period, due_at)

    async def _collect(self) -> None:
        for m, fl in list(self._in_flight.items()):
            out = fl.handle.outcome
            if out is None:
                continue
            del self._in_flight[m]
            if out.state == "mined" and out.block_number is not None:
                blk = await self.views.rpc.call("eth_getBlockByNumber", [hex(out.block_number), False])
                lateness = max(0, int(blk["timestamp"], 16) - fl.due_at)
                self.stats["mined"] += 1
                if self.metrics is not None:
                    self.metrics.funding_lateness.observe(lateness)
                log.info("funding settled: market %d period %d, %d s after due", m, fl.period, lateness)
                if self.on_settled is not None:
                    self.on_settled(m, fl.period, lateness)
            else:
                # reverted / cancelled: a rival mined first between our simulation and inclusion
                self.stats["reverted" if out.state == "reverted" else "settled_by_other"] += 1
                log.warning("funding tx for market %d ended %s (%s)", m, out.state, out.error)

    async def _one(self, m: int, now: int, params: RiskParams) -> SettleResult:
        st = await self.views.market_state(m)  # chain state, not memory: restart- and rival-safe
        period_len = params.funding_period
        due_at = (st.last_funding_period + 1) * period_len
        fl = self._in_flight.get(m)
        if fl is not None:
            if st.last_funding_period >= fl.period:
                return SettleResult(m, "pending", due_at, now, fl.handle, "settled, awaiting our receipt")
            return SettleResult(m, "pending", fl.due_at, now, fl.handle)
        if now + self.lead_seconds < due_at:
            return SettleResult(m, "not_due", due_at, now)
        if self.dry_run or self.txm is None:
            return SettleResult(m, "due", due_at, now, detail="dry run: not sent")
        period = max(now // period_len, st.last_funding_period + 1)
        try:
            handle = await self.txm.submit(
                self.views.exchange, settle_calldata(m), purpose=f"funding:{m}:{period}:{due_at}"
            )
        except SimulationReverted as rev:
            if rev.selector == FUNDING_NOT_DUE:
                # someone settled it first (or it is in the pool), or the pending block is not yet due
                self.stats["settled_by_other"] += 1
                return SettleResult(m, "settled_by_other", due_at, now, detail="FundingNotDue")
            self.stats["errors"] += 1
            log.error("settleFunding(%d) would revert: %s (%s)", m, rev.reason, rev.selector)
            return SettleResult(m, "error", due_at, now, detail=rev.reason)
        except RpcError as exc:
            self.stats["errors"] += 1
            log.error("settleFunding(%d) not sent: %s", m, exc)
            return SettleResult(m, "error", due_at, now, detail=str(exc))
        self.stats["sent"] += 1
        self._in_flight[m] = _InFlight(handle, period, due_at)
        return SettleResult(m, "sent", due_at, now, handle)

    def in_flight(self) -> dict[int, TxHandle]:
        return {m: f.handle for m, f in self._in_flight.items()}


# ---------------------------------------------------------------------------------------- figures


class FundingFigureRow(SQLModel, table=True):
    """The keeper's own funding figures per market (from the index, with keeper.risk.math)."""

    __tablename__ = "funding_figures"

    chain_id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    market_id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    #: The index checkpoint / chain time the figures were computed at.
    block_number: int = Field(sa_type=BigInteger)
    chain_time: int = Field(sa_type=BigInteger)
    #: The keeper's replay of the settlements: index, last period and rate applied.
    funding_index: int = big()
    last_funding_period: int = big()
    current_rate_wad: int = big()
    #: The next settlement as predicted now: rate (current open interest), index (latest mark), due time.
    predicted_rate_wad: int = big()
    predicted_index: int = big()
    next_due_at: int = big()
    mark_price: int | None = big(nullable=True)
    long_size: int = big()
    short_size: int = big()
    #: Settlements replayed, the id of the last one, and whether every replay equalled the contract.
    settlements: int = Field(sa_type=BigInteger)
    last_settlement_id: int | None = Field(default=None, sa_type=BigInteger)
    matches: bool = True
    mismatch: str | None = Field(default=None, max_length=500)


FUNDING_FIGURES = table_of(FundingFigureRow)


def _risk_params(conn: Any, chain_id: int, fallback: RiskParams | None) -> tuple[int, int]:
    row = conn.execute(select(RISK_PARAMS).where(RISK_PARAMS.c.chain_id == chain_id)).mappings().first()
    if row is not None:
        return int(row["max_funding_rate_wad"]), int(row["funding_period"])
    if fallback is not None:
        return fallback.max_funding_rate_wad, fallback.funding_period
    return DEFAULT_MAX_RATE_WAD, DEFAULT_FUNDING_PERIOD


def _upsert(conn: Any, values: dict[str, Any]) -> None:
    dialect = conn.dialect.name
    ins: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(FUNDING_FIGURES).values(
        **values
    )
    keys = {k: ins.excluded[k] for k in values if k not in ("chain_id", "market_id")}
    conn.execute(ins.on_conflict_do_update(index_elements=["chain_id", "market_id"], set_=keys))


def update_figures(
    engine: Engine,
    chain_id: int,
    *,
    chain_time: int | None = None,
    block_number: int = 0,
    params: RiskParams | None = None,
) -> list[dict[str, Any]]:
    """Replays new settlements and refreshes the predictions of every listed market; returns the rows.

    Incremental: each market's replay resumes from its ``last_settlement_id`` (a reorg that removed
    settlements is detected by a missing id and answered by a full replay).
    """
    out: list[dict[str, Any]] = []
    with for_writes(engine).begin() as conn:
        max_rate, period_len = _risk_params(conn, chain_id, params)
        markets = (
            conn.execute(
                select(MARKETS)
                .where(MARKETS.c.chain_id == chain_id, MARKETS.c.listed.is_(True))
                .order_by(MARKETS.c.market_id)
            )
            .mappings()
            .all()
        )
        prev_rows = {
            r["market_id"]: r
            for r in conn.execute(
                select(FUNDING_FIGURES).where(FUNDING_FIGURES.c.chain_id == chain_id)
            ).mappings()
        }
        for mk in markets:
            m = int(mk["market_id"])
            prev = prev_rows.get(m)
            if prev is not None and prev["last_settlement_id"] is not None:
                still = conn.execute(
                    select(FUNDING_SETTLEMENTS.c.id).where(
                        FUNDING_SETTLEMENTS.c.id == prev["last_settlement_id"]
                    )
                ).first()
                if still is None:
                    prev = None  # rolled back: replay from the listing
            if prev is None:
                listed = conn.execute(
                    select(EVENTS.c.block_timestamp)
                    .where(
                        EVENTS.c.chain_id == chain_id,
                        EVENTS.c.event_name == "MarketListed",
                        EVENTS.c.market_id == m,
                    )
                    .order_by(EVENTS.c.id.desc())
                    .limit(1)
                ).first()
                index, period, rate, count, last_id = (
                    0,
                    (int(listed[0]) // period_len) if listed else 0,
                    0,
                    0,
                    None,
                )
                matches, mismatch = True, None
            else:
                index, period = int(prev["funding_index"]), int(prev["last_funding_period"])
                rate, count, last_id = (
                    int(prev["current_rate_wad"]),
                    int(prev["settlements"]),
                    prev["last_settlement_id"],
                )
                matches, mismatch = bool(prev["matches"]), prev["mismatch"]
            q = select(FUNDING_SETTLEMENTS).where(
                FUNDING_SETTLEMENTS.c.chain_id == chain_id, FUNDING_SETTLEMENTS.c.market_id == m
            )
            if last_id is not None:
                q = q.where(FUNDING_SETTLEMENTS.c.id > last_id)
            for s in conn.execute(
                q.order_by(FUNDING_SETTLEMENTS.c.block_number, FUNDING_SETTLEMENTS.c.log_index)
            ).mappings():
                rate = rm.funding_rate(int(s["long_size"]), int(s["short_size"]), max_rate)
                index += rm.funding_index_delta(rate, int(s["mark_price"]), int(s["period"]) - period)
                period = int(s["period"])
                count += 1
                last_id = s["id"]
                if (index, rate) != (int(s["index_after"]), int(s["rate_wad"])) and matches:
                    matches = False
                    mismatch = (
                        f"period {period}: keeper index {index} rate {rate}, "
                        f"contract {s['index_after']} rate {s['rate_wad']}"
                    )
                    log.error("funding replay mismatch, market %d: %s", m, mismatch)
                    index, rate = int(s["index_after"]), int(s["rate_wad"])  # resync, keep the flag
            now = chain_time if chain_time is not None else int(mk["price_timestamp"] or 0)
            due = (period + 1) * period_len
            periods_due = max(1, now // period_len - period) if now >= due else 1
            predicted_rate = rm.funding_rate(int(mk["long_size"]), int(mk["short_size"]), max_rate)
            mark = mk["mark_price"]
            predicted_index = index + (
                rm.funding_index_delta(predicted_rate, int(mark), periods_due) if mark else 0
            )
            values = {
                "chain_id": chain_id,
                "market_id": m,
                "block_number": block_number,
                "chain_time": now,
                "funding_index": index,
                "last_funding_period": period,
                "current_rate_wad": rate,
                "predicted_rate_wad": predicted_rate,
                "predicted_index": predicted_index,
                "next_due_at": due,
                "mark_price": int(mark) if mark is not None else None,
                "long_size": int(mk["long_size"]),
                "short_size": int(mk["short_size"]),
                "settlements": count,
                "last_settlement_id": last_id,
                "matches": matches,
                "mismatch": mismatch,
            }
            _upsert(conn, values)
            out.append(values)
    return out


def load_figures(engine: Engine, chain_id: int) -> list[dict[str, Any]]:
    """The stored figures, for the page and ``keeper funding``."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(FUNDING_FIGURES)
            .where(FUNDING_FIGURES.c.chain_id == chain_id)
            .order_by(FUNDING_FIGURES.c.market_id)
        ).mappings()
        return [dict(r) for r in rows]
