"""State derived from events: append-only histories and current state per key, forward and on rollback.

The contracts' events carry the resulting state (``collateralAfter``, ``sizeAfter``, ``indexAfter``...),
so every column of a current-state table is one of two kinds:

* **latest** - the value carried by the latest event (by block, log index) of the column's *group* for
  that key, or the group's default when there is none; every event of a group sets every column of
  the group, so "latest event wins" is well defined;
* **sum** - the sum over the key's events of a per-event contribution (a trade count, the fund's fee
  income, a market's long open interest from ``sizeAfter - sizeDelta`` -> ``sizeAfter``).

A key's row exists iff at least one of the table's events exists for it. Hence the two paths give the
same rows as a fresh index of the final chain:

* forward (:meth:`Deriver.apply`): fold the batch's events in order onto the current rows;
* rollback above block F (:meth:`Deriver.rollback`): read the events above F, delete them and the
  append-only rows above F, subtract their sum contributions from the touched rows, and recompute each
  touched row's latest groups from the latest surviving event of each group (indexed queries), or
  delete the row when no event is left for its key.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table, and_, delete, or_, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from keeper.indexer.decode import EventDecoder
from keeper.indexer.records import LogRecord
from keeper.store.bulk import insert_wire, upsert_rows, wire_big, wire_columns, wire_converters
from keeper.store.models import (
    ACCOUNTS,
    ADL_EVENTS,
    APPEND_ONLY,
    BAD_DEBTS,
    EVENTS,
    FUND_FLOWS,
    FUNDING_SETTLEMENTS,
    LIQUIDATIONS,
    MARKETS,
    ORACLE_PRICES,
    POSITION_CHANGES,
    POSITIONS,
    PROTOCOL_STATE,
    RISK_PARAMS,
    TIER_CHANGES,
    TIER_LIMITS,
)

EX, OH, IF, LV = "Exchange", "OracleHub", "InsuranceFund", "LiquidityVault"
DEFAULT_FUNDING_PERIOD = 3_600  # Exchange constructor's params.fundingPeriod
CHUNK = 500

EventKey = tuple[str, str]  # (contract, event name)
Handler = Callable[[LogRecord, "Context | None"], dict[str, Any]]


# ------------------------------------------------------------------------------------------ specs


@dataclass
class Group:
    """Columns set together by the latest of ``handlers``' events for a key."""

    columns: tuple[str, ...]
    handlers: dict[EventKey, Handler]
    defaults: dict[str, Any]


@dataclass
class Sum:
    """A column holding the sum of per-event contributions."""

    column: str
    handlers: dict[EventKey, Callable[[LogRecord], int]]


@dataclass
class TableSpec:
    table: Table
    key_cols: tuple[str, ...]  # besides chain_id
    key: Callable[[LogRecord], tuple[Any, ...]]
    #: equality filters on the events table selecting the key's events (None: no column for it)
    event_filter: Callable[[tuple[Any, ...]], dict[str, Any]] | None
    groups: list[Group]
    sums: list[Sum] = field(default_factory=list)

    def __post_init__(self) -> None:
        cols = [c.name for c in self.table.columns if c.name not in ("chain_id", *self.key_cols)]
        covered = [c for g in self.groups for c in g.columns] + [s.column for s in self.sums]
        if sorted(cols) != sorted(covered):
            raise AssertionError(f"{self.table.name}: columns {cols} vs derived {covered}")
        self.event_keys: set[EventKey] = set()
        for g in self.groups:
            self.event_keys |= g.handlers.keys()
        #: columns a fold may leave as a :class:`ListingPeriod`, resolved where the database is at hand
        self.deferred = tuple(
            c for g in self.groups if _listing_period in g.handlers.values() for c in g.columns
        )
        for s in self.sums:
            self.event_keys |= s.handlers.keys()

    def defaults(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for g in self.groups:
            row.update(g.defaults)
        for s in self.sums:
            row[s.column] = 0
        return row


@dataclass
class Projection:
    """An append-only table: one row per event."""

    table: Table
    row: Callable[[LogRecord], dict[str, Any]]


class Context:
    """Lookups a handler may need beyond its event (run inside the same transaction)."""

    def __init__(self, conn: Connection, chain_id: int) -> None:
        self.conn = conn
        self.chain_id = chain_id

    def funding_period_before(self, ev: LogRecord) -> int:
        """Exchange's params.fundingPeriod in force just before ``ev``."""
        e = EVENTS.c
        q = (
            select(e.args)
            .where(
                e.chain_id == self.chain_id,
                e.event_name == "RiskParamsSet",
                e.contract == EX,
                or_(
                    e.block_number < ev.block_number,
                    and_(e.block_number == ev.block_number, e.log_index < ev.log_index),
                ),
            )
            .order_by(e.block_number.desc(), e.log_index.desc())
            .limit(1)
        )
        args = self.conn.execute(q).scalar()
        return int(args["params"]["fundingPeriod"]) if args is not None else DEFAULT_FUNDING_PERIOD


# ------------------------------------------------------------------------------------------ handlers


def _a(ev: LogRecord) -> dict[str, Any]:
    return ev.args


def _long(size: int) -> int:
    return size if size > 0 else 0


def _short(size: int) -> int:
    return -size if size < 0 else 0


def _oi_delta(side: Callable[[int], int]) -> Callable[[LogRecord], int]:
    def contribution(ev: LogRecord) -> int:
        ch = ev.args["change"]
        return side(ch["sizeAfter"]) - side(ch["sizeAfter"] - ch["sizeDelta"])

    return contribution


@dataclass(frozen=True)
class ListingPeriod:
    """A listing's funding period, to compute where the database is at hand (folds run without it)."""

    block_number: int
    log_index: int
    block_timestamp: int

    def resolve(self, ctx: Context) -> int:
        ref = LogRecord(
            self.block_number, "", self.block_timestamp, "", 0, self.log_index, "", None, None, {}
        )
        return self.block_timestamp // ctx.funding_period_before(ref)


def _listing_period(ev: LogRecord, ctx: Context | None) -> dict[str, Any]:
    if ev.block_timestamp is None:
        raise ValueError(f"MarketListed at block {ev.block_number} without a block timestamp")
    pending = ListingPeriod(ev.block_number, ev.log_index, ev.block_timestamp)
    return {"last_funding_period": pending if ctx is None else pending.resolve(ctx)}


def _income(kind: int) -> Callable[[LogRecord], int]:
    return lambda ev: ev.args["amount"] if ev.args["kind"] == kind else 0


RISK_PARAM_COLUMNS = {
    "tradingFeeBps": "trading_fee_bps",
    "fundFeeBps": "fund_fee_bps",
    "liquidationBps": "liquidation_bps",
    "targetBps": "target_bps",
    "penaltyBps": "penalty_bps",
    "minRemainingNotional": "min_remaining_notional",
    "adlTriggerBps": "adl_trigger_bps",
    "adlTargetBps": "adl_target_bps",
    "maxFundingRateWad": "max_funding_rate_wad",
    "fundingPeriod": "funding_period",
    "accountNotionalCap": "account_notional_cap",
    "globalOiCap": "global_oi_cap",
}

TABLES: list[TableSpec] = [
    TableSpec(
        table=ACCOUNTS,
        key_cols=("address",),
        key=lambda ev: (ev.args["account"],),
        event_filter=lambda k: {"account": k[0]},
        groups=[
            Group(
                ("collateral",),
                {
                    (EX, "Deposited"): lambda ev, c: {"collateral": ev.args["collateralAfter"]},
                    (EX, "Withdrawn"): lambda ev, c: {"collateral": ev.args["collateralAfter"]},
                    (EX, "PositionChanged"): lambda ev, c: {
                        "collateral": ev.args["change"]["collateralAfter"]
                    },
                    (EX, "Liquidated"): lambda ev, c: {
                        "collateral": ev.args["liquidation"]["collateralAfter"]
                    },
                    (EX, "BadDebtSettled"): lambda ev, c: {"collateral": 0},
                },
                {"collateral": 0},
            ),
            Group(("tier",), {(EX, "TierChanged"): lambda ev, c: {"tier": ev.args["newTier"]}}, {"tier": 0}),
            Group(
                ("educated",),
                {(EX, "EducationSet"): lambda ev, c: {"educated": ev.args["done"]}},
                {"educated": False},
            ),
            Group(
                ("certified",),
                {(EX, "CertificationSet"): lambda ev, c: {"certified": ev.args["certified"]}},
                {"certified": False},
            ),
        ],
        sums=[
            Sum("trades", {(EX, "PositionChanged"): lambda ev: 1 if ev.args["change"]["reason"] == 0 else 0})
        ],
    ),
    TableSpec(
        table=POSITIONS,
        key_cols=("account", "market_id"),
        key=lambda ev: (ev.args["account"], ev.args["marketId"]),
        event_filter=lambda k: {"account": k[0], "market_id": k[1]},
        groups=[
            Group(
                ("size", "entry_price", "entry_funding_index", "updated_block"),
                {
                    (EX, "PositionChanged"): lambda ev, c: {
                        "size": ev.args["change"]["sizeAfter"],
                        "entry_price": ev.args["change"]["entryPriceAfter"],
                        "entry_funding_index": ev.args["change"]["entryFundingIndexAfter"],
                        "updated_block": ev.block_number,
                    }
                },
                {"size": 0, "entry_price": 0, "entry_funding_index": 0, "updated_block": 0},
            )
        ],
    ),
    TableSpec(
        table=MARKETS,
        key_cols=("market_id",),
        key=lambda ev: (ev.args["marketId"],),
        event_filter=lambda k: {"market_id": k[0]},
        groups=[
            Group(
                ("listed", "symbol", "mmr_bps"),
                {
                    (EX, "MarketListed"): lambda ev, c: {
                        "listed": True,
                        "symbol": ev.args["symbol"],
                        "mmr_bps": ev.args["mmrBps"],
                    }
                },
                {"listed": False, "symbol": None, "mmr_bps": None},
            ),
            Group(
                ("long_oi_cap", "short_oi_cap"),
                {
                    (EX, "MarketListed"): lambda ev, c: {
                        "long_oi_cap": ev.args["longOiCap"],
                        "short_oi_cap": ev.args["shortOiCap"],
                    },
                    (EX, "MarketCapsSet"): lambda ev, c: {
                        "long_oi_cap": ev.args["longOiCap"],
                        "short_oi_cap": ev.args["shortOiCap"],
                    },
                },
                {"long_oi_cap": None, "short_oi_cap": None},
            ),
            Group(
                ("last_funding_period",),
                {
                    (EX, "MarketListed"): _listing_period,
                    (EX, "FundingSettled"): lambda ev, c: {"last_funding_period": ev.args["period"]},
                },
                {"last_funding_period": None},
            ),
            Group(
                ("funding_index", "last_funding_rate"),
                {
                    (EX, "FundingSettled"): lambda ev, c: {
                        "funding_index": ev.args["indexAfter"],
                        "last_funding_rate": ev.args["rateWad"],
                    }
                },
                {"funding_index": 0, "last_funding_rate": 0},
            ),
            Group(
                ("adl_active",),
                {(EX, "AdlStateChanged"): lambda ev, c: {"adl_active": ev.args["active"]}},
                {"adl_active": False},
            ),
            Group(
                ("breaker_until",),
                {(OH, "CircuitBreakerTripped"): lambda ev, c: {"breaker_until": ev.args["until"]}},
                {"breaker_until": None},
            ),
            Group(
                ("paused",),
                {(OH, "MarketPauseSet"): lambda ev, c: {"paused": ev.args["paused"]}},
                {"paused": False},
            ),
            Group(
                ("primary_feed", "secondary_feed", "heartbeat"),
                {
                    (OH, "FeedSet"): lambda ev, c: {
                        "primary_feed": ev.args["primary"],
                        "secondary_feed": ev.args["secondary"],
                        "heartbeat": ev.args["heartbeat"],
                    }
                },
                {"primary_feed": None, "secondary_feed": None, "heartbeat": None},
            ),
            Group(
                (
                    "mark_price",
                    "primary_price",
                    "secondary_price",
                    "ema_price",
                    "price_block",
                    "price_timestamp",
                ),
                {
                    (OH, "PriceRefreshed"): lambda ev, c: {
                        "mark_price": ev.args["mark"],
                        "primary_price": ev.args["primary"],
                        "secondary_price": ev.args["secondary"],
                        "ema_price": ev.args["ema"],
                        "price_block": ev.block_number,
                        "price_timestamp": ev.block_timestamp,
                    }
                },
                {
                    "mark_price": None,
                    "primary_price": None,
                    "secondary_price": None,
                    "ema_price": None,
                    "price_block": None,
                    "price_timestamp": None,
                },
            ),
        ],
        sums=[
            Sum("long_size", {(EX, "PositionChanged"): _oi_delta(_long)}),
            Sum("short_size", {(EX, "PositionChanged"): _oi_delta(_short)}),
        ],
    ),
    TableSpec(
        table=PROTOCOL_STATE,
        key_cols=(),
        key=lambda ev: (),
        event_filter=lambda k: {},
        groups=[
            Group(
                ("fund_balance",),
                {
                    (IF, "FundIncome"): lambda ev, c: {"fund_balance": ev.args["balanceAfter"]},
                    (IF, "FundPayout"): lambda ev, c: {"fund_balance": ev.args["balanceAfter"]},
                },
                {"fund_balance": 0},
            ),
            Group(
                ("vault_socialized_loss",),
                {(LV, "SocializedLoss"): lambda ev, c: {"vault_socialized_loss": ev.args["totalSocialized"]}},
                {"vault_socialized_loss": 0},
            ),
        ],
        sums=[
            Sum("fund_fee_income", {(IF, "FundIncome"): _income(0)}),
            Sum("fund_penalty_income", {(IF, "FundIncome"): _income(1)}),
            Sum("fund_donations", {(IF, "FundIncome"): _income(2)}),
            Sum("fund_payouts", {(IF, "FundPayout"): lambda ev: ev.args["paid"]}),
            Sum("total_bad_debt", {(EX, "BadDebtSettled"): lambda ev: ev.args["debt"]}),
            Sum("total_socialized_loss", {(EX, "BadDebtSettled"): lambda ev: ev.args["socialized"]}),
        ],
    ),
    TableSpec(
        table=RISK_PARAMS,
        key_cols=(),
        key=lambda ev: (),
        event_filter=lambda k: {},
        groups=[
            Group(
                tuple(RISK_PARAM_COLUMNS.values()),
                {
                    (EX, "RiskParamsSet"): lambda ev, c: {
                        col: ev.args["params"][f] for f, col in RISK_PARAM_COLUMNS.items()
                    }
                },
                dict.fromkeys(RISK_PARAM_COLUMNS.values()),
            )
        ],
    ),
    TableSpec(
        table=TIER_LIMITS,
        key_cols=("tier",),
        key=lambda ev: (ev.args["tier"],),
        event_filter=None,
        groups=[
            Group(
                ("max_leverage", "max_order_notional"),
                {
                    (EX, "TierLimitsSet"): lambda ev, c: {
                        "max_leverage": ev.args["maxLeverage"],
                        "max_order_notional": ev.args["maxOrderNotional"],
                    }
                },
                {"max_leverage": None, "max_order_notional": None},
            )
        ],
    ),
]


def _pc_row(ev: LogRecord) -> dict[str, Any]:
    ch = ev.args["change"]
    return {
        "account": ev.args["account"],
        "market_id": ev.args["marketId"],
        "reason": ch["reason"],
        "size_delta": ch["sizeDelta"],
        "price": ch["price"],
        "size_after": ch["sizeAfter"],
        "entry_price_after": ch["entryPriceAfter"],
        "entry_funding_index_after": ch["entryFundingIndexAfter"],
        "realized_pnl": ch["realizedPnl"],
        "funding_paid": ch["fundingPaid"],
        "fee": ch["fee"],
        "collateral_after": ch["collateralAfter"],
    }


def _liq_row(ev: LogRecord) -> dict[str, Any]:
    q = ev.args["liquidation"]
    return {
        "account": ev.args["account"],
        "market_id": ev.args["marketId"],
        "liquidator": q["liquidator"],
        "size_closed": q["sizeClosed"],
        "price": q["price"],
        "penalty": q["penalty"],
        "keeper_reward": q["keeperReward"],
        "fund_share": q["fundShare"],
        "full": q["full"],
        "account_value_before": q["accountValueBefore"],
        "maintenance_margin_before": q["maintenanceMarginBefore"],
        "collateral_after": q["collateralAfter"],
    }


PROJECTIONS: dict[EventKey, Projection] = {
    (EX, "PositionChanged"): Projection(POSITION_CHANGES, _pc_row),
    (EX, "Liquidated"): Projection(LIQUIDATIONS, _liq_row),
    (IF, "FundIncome"): Projection(
        FUND_FLOWS,
        lambda ev: {
            "direction": "income",
            "kind": ev.args["kind"],
            "account": ev.args["account"],
            "to_address": None,
            "amount": ev.args["amount"],
            "requested": None,
            "balance_after": ev.args["balanceAfter"],
        },
    ),
    (IF, "FundPayout"): Projection(
        FUND_FLOWS,
        lambda ev: {
            "direction": "payout",
            "kind": None,
            "account": ev.args["account"],
            "to_address": ev.args["to"],
            "amount": ev.args["paid"],
            "requested": ev.args["requested"],
            "balance_after": ev.args["balanceAfter"],
        },
    ),
    (EX, "BadDebtSettled"): Projection(
        BAD_DEBTS,
        lambda ev: {
            "account": ev.args["account"],
            "debt": ev.args["debt"],
            "paid_by_fund": ev.args["paidByFund"],
            "socialized": ev.args["socialized"],
        },
    ),
    (EX, "AutoDeleveraged"): Projection(
        ADL_EVENTS,
        lambda ev: {
            "account": ev.args["account"],
            "market_id": ev.args["marketId"],
            "size_closed": ev.args["sizeClosed"],
            "price": ev.args["price"],
            "realized_pnl": ev.args["realizedPnl"],
            "rank_score": ev.args["rankScore"],
            "market_trader_pnl_after": ev.args["marketTraderPnlAfter"],
            "vault_assets_after": ev.args["vaultAssetsAfter"],
        },
    ),
    (EX, "FundingSettled"): Projection(
        FUNDING_SETTLEMENTS,
        lambda ev: {
            "market_id": ev.args["marketId"],
            "period": ev.args["period"],
            "rate_wad": ev.args["rateWad"],
            "mark_price": ev.args["markPrice"],
            "index_after": ev.args["indexAfter"],
            "long_size": ev.args["longSize"],
            "short_size": ev.args["shortSize"],
        },
    ),
    (EX, "TierChanged"): Projection(
        TIER_CHANGES,
        lambda ev: {
            "account": ev.args["account"],
            "old_tier": ev.args["oldTier"],
            "new_tier": ev.args["newTier"],
            "trades": ev.args["trades"],
        },
    ),
    (OH, "PriceRefreshed"): Projection(
        ORACLE_PRICES,
        lambda ev: {
            "market_id": ev.args["marketId"],
            "primary_price": ev.args["primary"],
            "secondary_price": ev.args["secondary"],
            "ema_price": ev.args["ema"],
            "mark_price": ev.args["mark"],
        },
    ),
}


# ------------------------------------------------------------------------------------------ deriver


@dataclass
class Folded:
    """A range's effect on the derived tables, computed without the database (picklable).

    ``appends``: history table -> wire rows (:func:`keeper.store.bulk.to_wire`, columns
    :func:`keeper.store.bulk.wire_columns`); ``touches``: current-state table -> key -> (columns set by
    the key's latest events, sum contributions).
    """

    appends: dict[str, list[tuple[Any, ...]]]
    touches: dict[str, dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, int]]]]


_WIRE: dict[str, tuple[list[str], list[tuple[int, Callable[[Any], Any]]]]] = {}
WireRow = Callable[[LogRecord, dict[str, Any], int], tuple[Any, ...]]
#: what :meth:`Deriver.fold` does with one (contract, event): the history row it appends (table name,
#: wire-row builder, projection), and per current-state table (name, key, group handlers, sums)
_Plan = tuple[
    tuple[str, WireRow, Callable[[LogRecord], dict[str, Any]]] | None,
    list[
        tuple[
            str,
            Callable[[LogRecord], tuple[Any, ...]],
            list[tuple[int, Handler]],
            list[tuple[str, Callable[[LogRecord], int]]],
        ]
    ],
]
_REF_ATTRS = {"block_number", "block_hash", "block_timestamp", "tx_hash", "log_index"}


def _wire_row(table: Table) -> WireRow:
    """(event, its projection's row, chain id) -> the history table's wire row (the columns of
    :func:`_wire_of`, converted): generated once per table, the hot path of a backfill's fold."""
    names, convs = _wire_of(table)
    conv_at = dict(convs)
    scope: dict[str, Any] = {}
    parts = []
    for i, n in enumerate(names):
        src = "cid" if n == "chain_id" else f"ev.{n}" if n in _REF_ATTRS else f"row[{n!r}]"
        if conv_at.get(i) is wire_big:  # inlined for ints (900,000 calls per 200,000 events)
            scope[f"c{i}"] = wire_big
            src = f"(str(v{i}) if (v{i} := {src}).__class__ is int else c{i}(v{i}))"
        elif i in conv_at:
            scope[f"c{i}"] = conv_at[i]
            src = f"c{i}({src})"
        parts.append(src)
    code = f"def wire(ev, row, cid):\n    return ({', '.join(parts)},)\n"
    exec(compile(code, f"<{table.name} wire row>", "exec"), scope)  # noqa: S102
    fn: WireRow = scope["wire"]
    return fn


def history_columns(name: str) -> list[str]:
    """The wire columns of the history (append-only) table ``name``: the order of ``Folded.appends`` rows."""
    for table in APPEND_ONLY:
        if table.name == name:
            return _wire_of(table)[0]
    raise KeyError(f"{name} is not a history table")


def _wire_of(table: Table) -> tuple[list[str], list[tuple[int, Callable[[Any], Any]]]]:
    """A history table's wire columns and the (position, converter) pairs of those that need one."""
    w = _WIRE.get(table.name)
    if w is None:
        names = wire_columns(table)
        convs = [(i, f) for i, f in enumerate(wire_converters(table, names)) if f is not None]
        w = _WIRE[table.name] = (names, convs)
    return w


class Deriver:
    """Applies decoded events to the derived tables (forward) and undoes them (rollback)."""

    def __init__(
        self, decoder: EventDecoder, tables: Sequence[TableSpec] = TABLES, cache_rows: int = 1_000_000
    ) -> None:
        self.decoder = decoder
        self.tables = list(tables)
        # (contract, event) -> [(table spec, [(group index, handler)], [(sum, fn)])]
        self._routes: dict[
            EventKey,
            list[tuple[TableSpec, list[tuple[int, Handler]], list[tuple[Sum, Callable[[LogRecord], int]]]]],
        ] = {}
        for ts in self.tables:
            for ek in ts.event_keys:
                groups = [(i, g.handlers[ek]) for i, g in enumerate(ts.groups) if ek in g.handlers]
                sums = [(s, s.handlers[ek]) for s in ts.sums if ek in s.handlers]
                self._routes.setdefault(ek, []).append((ts, groups, sums))
        # (contract, event) -> what :meth:`fold` does with it, resolved once: the history table's
        # (name, wire-row builder, row function) and the current-state routes
        self._plans: dict[EventKey, _Plan] = {}
        for ek in {*self._routes, *PROJECTIONS}:
            proj = PROJECTIONS.get(ek)
            self._plans[ek] = (
                (proj.table.name, _wire_row(proj.table), proj.row) if proj is not None else None,
                [(ts.table.name, ts.key, groups, [(su.column, fn) for su, fn in sums])
                 for ts, groups, sums in self._routes.get(ek, ())],
            )  # fmt: skip
        # Current-state rows as last committed, so that the next range does not read them back:
        # (chain id, table) -> key -> row. Filled by :meth:`keep` after a commit, emptied by
        # :meth:`clear` (rollbacks, failed commits); at most ``cache_rows`` rows (then: no caching).
        self.cache_rows = cache_rows
        self._cache: dict[tuple[int, str], dict[tuple[Any, ...], dict[str, Any]]] = {}
        self._cached = 0
        #: (chain id, table) whose every stored row is in the cache: found empty while the cache was, and
        #: kept since (a key missing from the cache is then missing from the table: a fresh backfill
        #: does not ask the database about each account and position it meets for the first time)
        self._complete: set[tuple[int, str]] = set()
        self._pending: dict[tuple[int, str], dict[tuple[Any, ...], dict[str, Any]]] = {}
        #: (chain id, table) -> keys whose pending row is not written yet (see :meth:`flush`)
        self._dirty: dict[tuple[int, str], dict[tuple[Any, ...], None]] = {}  # keys in first-touch order

    # ---------------------------------------------------------------------------------- row cache

    def keep(self) -> None:
        """The transaction of the last :meth:`apply` committed: its rows are the stored ones now."""
        pending, self._pending = self._pending, {}
        for name, rows in pending.items():
            table = self._cache.setdefault(name, {})
            before = len(table)
            table.update(rows)
            self._cached += len(table) - before
        if self._cached > self.cache_rows:
            self.clear()

    def begin(self) -> None:
        """A new write transaction: forget rows computed by one that did not commit."""
        self._pending = {}
        self._dirty = {}

    def clear(self) -> None:
        """Forgets every cached row (after a rollback or a failed commit)."""
        self._cache.clear()
        self._complete.clear()
        self._pending = {}
        self._dirty = {}
        self._cached = 0

    # ---------------------------------------------------------------------------------- forward

    def apply(self, conn: Connection, chain_id: int, records: Iterable[LogRecord]) -> None:
        """Folds ``records`` (in chain order, already inserted into ``events``) onto the derived tables."""
        self.apply_folded(conn, chain_id, self.fold(chain_id, list(records)))
        self.flush(conn)

    def fold(self, chain_id: int, records: Sequence[LogRecord]) -> Folded:
        """What ``records`` (in chain order) do to the derived tables; no database needed (workers).

        Walked newest first: a group's columns come from its latest event for the key, so the older
        events of the same group and key are not evaluated at all (sums still count every event).
        """
        touched: dict[str, dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, int], set[int]]]] = {}
        appends: dict[str, list[tuple[Any, ...]]] = {}
        plans = self._plans
        for ev in reversed(records):
            if ev.event_name is None or ev.contract is None:
                continue
            plan = plans.get((ev.contract, ev.event_name))
            if plan is None:
                continue
            proj, routes = plan
            if proj is not None:
                rows = appends.get(proj[0])
                if rows is None:
                    rows = appends[proj[0]] = []
                rows.append(proj[1](ev, proj[2](ev), chain_id))
            for name, key_of, groups, sums in routes:
                key = key_of(ev)
                by_key = touched.get(name)
                if by_key is None:
                    by_key = touched[name] = {}
                t = by_key.get(key)
                if t is None:
                    t = by_key[key] = ({}, {}, set())
                done = t[2]
                for g_i, handler in groups:
                    if g_i not in done:  # a later event of this group already set its columns
                        done.add(g_i)
                        t[0].update(handler(ev, None))
                adds = t[1]
                for column, fn in sums:
                    v = fn(ev)
                    if v:
                        adds[column] = adds.get(column, 0) + v
        for rows in appends.values():
            rows.reverse()  # chain order
        return Folded(
            appends, {name: {k: (t[0], t[1]) for k, t in keys.items()} for name, keys in touched.items()}
        )

    def apply_folded(self, conn: Connection, chain_id: int, folded: Folded) -> None:
        """Applies a :meth:`fold` result: history rows inserted, current rows (cached or read back)
        updated in memory; :meth:`flush` writes those, once per key for all the ranges of a
        transaction (a backfill's transaction holds several ranges that touch the same accounts)."""
        ctx = Context(conn, chain_id)
        for ts in self.tables:
            keys = folded.touches.get(ts.table.name)
            if not keys:
                continue
            # rows written earlier in this transaction (this transaction's own: updated in place), then
            # rows as last committed (copied), then the database
            pending = self._pending.setdefault((chain_id, ts.table.name), {})
            cache = self._cache.get((chain_id, ts.table.name), {})
            missing = [k for k in keys if k not in pending and k not in cache]
            loaded = {}
            if missing and not self._known_complete(conn, chain_id, ts):
                loaded = self._load(conn, chain_id, ts, missing)
            dirty = self._dirty.setdefault((chain_id, ts.table.name), {})
            deferred = ts.deferred
            for key, (sets, adds) in keys.items():
                row = pending.get(key)
                if row is None:
                    old_row = cache.get(key) or loaded.get(key)
                    if old_row is None:
                        row = ts.defaults()
                        row.update(_key_dict(chain_id, ts, key))
                    else:
                        row = old_row.copy()
                    pending[key] = row
                row.update(sets)
                for col in deferred:
                    v = row[col]
                    if isinstance(v, ListingPeriod):
                        row[col] = v.resolve(ctx)
                for col, n in adds.items():
                    row[col] += n
                dirty[key] = None
        for proj_table in APPEND_ONLY:
            new_rows = folded.appends.get(proj_table.name)
            if new_rows:
                insert_wire(conn, proj_table, _wire_of(proj_table)[0], new_rows)

    def flush(self, conn: Connection) -> None:
        """Upserts the current-state rows changed since the last flush (one executemany per table)."""
        dirty, self._dirty = self._dirty, {}
        order = {ts.table.name: (i, ts) for i, ts in enumerate(self.tables)}
        for (chain_id, name), keys in sorted(dirty.items(), key=lambda item: order[item[0][1]][0]):
            if not keys:
                continue
            ts = order[name][1]
            names = ["chain_id", *ts.key_cols]
            names += [c.name for c in ts.table.columns if c.name not in names]
            get = itemgetter(*names)
            pending = self._pending[(chain_id, name)]
            rows = [get(pending[k]) for k in keys]
            upsert_rows(conn, ts.table, names[: 1 + len(ts.key_cols)], names, rows)

    # ---------------------------------------------------------------------------------- rollback

    def rollback(self, conn: Connection, chain_id: int, fork_block: int) -> int:
        """Removes everything above ``fork_block`` and recomputes the touched keys. Returns events removed."""
        e = EVENTS.c
        removed = [
            self.record_from_row(r)
            for r in conn.execute(
                select(EVENTS)
                .where(e.chain_id == chain_id, e.block_number > fork_block)
                .order_by(e.block_number, e.log_index)
            ).mappings()
        ]
        conn.execute(delete(EVENTS).where(e.chain_id == chain_id, e.block_number > fork_block))
        for t in APPEND_ONLY:
            conn.execute(delete(t).where(t.c.chain_id == chain_id, t.c.block_number > fork_block))
        touched: dict[str, dict[tuple[Any, ...], dict[str, int]]] = defaultdict(dict)
        for ev in removed:
            if ev.event_name is None or ev.contract is None:
                continue
            for ts, _groups, sums in self._routes.get((ev.contract, ev.event_name), ()):
                sub = touched[ts.table.name].setdefault(ts.key(ev), defaultdict(int))
                for s, fn in sums:
                    sub[s.column] += fn(ev)
        ctx = Context(conn, chain_id)
        for ts in self.tables:
            keys = touched.get(ts.table.name)
            if not keys:
                continue
            existing = self._load(conn, chain_id, ts, list(keys))
            upserts, deletes = [], []
            for key, removed_sums in keys.items():
                latest = {
                    g_i: self._latest(conn, chain_id, ts, key, g.handlers) for g_i, g in enumerate(ts.groups)
                }
                alive = any(v is not None for v in latest.values())
                if not alive:
                    sum_only = {ek for s in ts.sums for ek in s.handlers} - {
                        ek for g in ts.groups for ek in g.handlers
                    }
                    alive = (
                        bool(sum_only)
                        and self._latest(conn, chain_id, ts, key, dict.fromkeys(sum_only)) is not None
                    )
                if not alive:
                    deletes.append(key)
                    continue
                old_row = existing.get(key)
                row = dict(old_row) if old_row is not None else ts.defaults()
                for col, v in removed_sums.items():
                    row[col] -= v
                for g_i, g in enumerate(ts.groups):
                    last = latest[g_i]
                    if last is None or last.contract is None or last.event_name is None:
                        row.update(g.defaults)
                    else:
                        row.update(g.handlers[(last.contract, last.event_name)](last, ctx))
                row.update(_key_dict(chain_id, ts, key))
                upserts.append(row)
            if deletes:
                self._delete(conn, chain_id, ts, deletes)
            if upserts:
                self._upsert(conn, ts, upserts)
        return len(removed)

    # ---------------------------------------------------------------------------------- helpers

    def record_from_row(self, r: Any) -> LogRecord:
        spec = None
        args = r["args"]
        if r["event_name"] is not None and r["contract"] is not None:
            spec = self.decoder.by_name.get((r["contract"], r["event_name"]))
            if spec is not None:
                args = spec.from_json(args)
        return LogRecord(
            block_number=r["block_number"],
            block_hash=r["block_hash"],
            block_timestamp=r["block_timestamp"],
            tx_hash=r["tx_hash"],
            tx_index=r["tx_index"],
            log_index=r["log_index"],
            address=r["address"],
            contract=r["contract"],
            event_name=r["event_name"],
            args=args,
            spec=spec,
        )

    def _latest(
        self,
        conn: Connection,
        chain_id: int,
        ts: TableSpec,
        key: tuple[Any, ...],
        handlers: dict[EventKey, Any],
    ) -> LogRecord | None:
        """The latest stored event among ``handlers``' events for ``key`` (one indexed query per event)."""
        e = EVENTS.c
        best: LogRecord | None = None
        filt = ts.event_filter(key) if ts.event_filter is not None else None
        for contract, name in handlers:
            q = select(EVENTS).where(e.chain_id == chain_id, e.event_name == name, e.contract == contract)
            if filt is not None:
                q = q.where(*(e[col] == v for col, v in filt.items()))
            # `+ 0` when filtered: SQLite otherwise walks uq_events_position backwards (it satisfies the
            # ORDER BY) through EVERY event when the key has none of this kind (a reorg's rollback of a
            # 2,000-trader book took ~90 s); so it uses the key's own index and sorts its few rows
            newest = e.block_number + 0 if filt is not None else e.block_number
            q = q.order_by(newest.desc(), e.log_index.desc())
            if filt is not None:
                row = conn.execute(q.limit(1)).mappings().first()
                cand = self.record_from_row(row) if row is not None else None
            else:  # no column for this key: scan newest first and match in Python (rare events only)
                cand = None
                for row in conn.execute(q).mappings():
                    rec = self.record_from_row(row)
                    if ts.key(rec) == key:
                        cand = rec
                        break
            if cand is not None and (best is None or cand.position > best.position):
                best = cand
        return best

    def _known_complete(self, conn: Connection, chain_id: int, ts: TableSpec) -> bool:
        """Whether the cache holds every stored row of ``ts`` (see ``_complete``); one query when its cache
        is empty and the table may be too."""
        name = (chain_id, ts.table.name)
        if name in self._complete:
            return True
        if self._cache.get(name):
            return False
        t = ts.table
        if conn.execute(select(t.c.chain_id).where(t.c.chain_id == chain_id).limit(1)).first() is None:
            self._complete.add(name)
            return True
        return False

    def _load(
        self, conn: Connection, chain_id: int, ts: TableSpec, keys: list[tuple[Any, ...]]
    ) -> dict[tuple[Any, ...], dict[str, Any]]:
        t = ts.table
        out: dict[tuple[Any, ...], dict[str, Any]] = {}
        kcols = [t.c[c] for c in ts.key_cols]
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i : i + CHUNK]
            q = select(t).where(t.c.chain_id == chain_id)
            if len(kcols) == 1:
                q = q.where(kcols[0].in_([k[0] for k in chunk]))
            elif kcols:
                q = q.where(tuple_(*kcols).in_(chunk))
            for r in conn.execute(q).mappings():
                out[tuple(r[c] for c in ts.key_cols)] = dict(r)
        return out

    def _delete(self, conn: Connection, chain_id: int, ts: TableSpec, keys: list[tuple[Any, ...]]) -> None:
        t = ts.table
        kcols = [t.c[c] for c in ts.key_cols]
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i : i + CHUNK]
            q = delete(t).where(t.c.chain_id == chain_id)
            if len(kcols) == 1:
                q = q.where(kcols[0].in_([k[0] for k in chunk]))
            elif kcols:
                q = q.where(tuple_(*kcols).in_(chunk))
            conn.execute(q)

    def _upsert(self, conn: Connection, ts: TableSpec, rows: list[dict[str, Any]]) -> None:
        t = ts.table
        ins = postgresql.insert(t) if conn.dialect.name == "postgresql" else sqlite.insert(t)
        pk = ["chain_id", *ts.key_cols]
        stmt = ins.on_conflict_do_update(
            index_elements=pk, set_={c.name: ins.excluded[c.name] for c in t.columns if c.name not in pk}
        )
        conn.execute(stmt, rows)


def _ref(chain_id: int, ev: LogRecord) -> dict[str, Any]:
    return {
        "chain_id": chain_id,
        "block_number": ev.block_number,
        "block_hash": ev.block_hash,
        "block_timestamp": ev.block_timestamp,
        "tx_hash": ev.tx_hash,
        "log_index": ev.log_index,
    }


def _key_dict(chain_id: int, ts: TableSpec, key: tuple[Any, ...]) -> dict[str, Any]:
    d = {"chain_id": chain_id}
    d.update(zip(ts.key_cols, key, strict=True))
    return d
