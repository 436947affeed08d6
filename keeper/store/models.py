"""The indexer's tables: raw events, the reorg window, the checkpoint and the state derived from events.

Every table carries ``chain_id``. uint256/int256 values are :class:`~keeper.store.types.BigInt` (exact
Python ints on both databases). Three kinds of tables:

* **raw and bookkeeping**: ``events`` (every decoded log), ``blocks`` (the recent block hashes that
  reorgs are checked against), ``checkpoints`` (last indexed block and hash, written in the same
  transaction as the data it covers);
* **append-only histories**, one row per event (``position_changes``, ``liquidations``,
  ``fund_flows``, ``bad_debts``, ``adl_events``, ``funding_settlements``, ``tier_changes``,
  ``oracle_prices``): a rollback deletes the rows above the fork block;
* **current state** per key (``accounts``, ``positions``, ``markets``, ``protocol_state``,
  ``risk_params``, ``tier_limits``): each column is either the value carried by the latest event of its
  group for that key (the contracts' events carry the resulting state) or a sum of per-event
  contributions; a rollback recomputes the touched keys (see :mod:`keeper.indexer.derive`).

``events`` and the append-only histories have one unique index each, on the log's position
``(chain_id, block_number, log_index)``: the index holds one chain at a time (a rollback deletes
everything above the fork block before re-indexing), so this is stronger than uniqueness on the block
hash, and cheaper to maintain than an index keyed by a random hash (see :func:`_position_unique`).
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import BigInteger, Column, Index, Integer, Table, text
from sqlmodel import Field, SQLModel

from keeper.store.types import BigInt, JsonDoc

HASH = 66  # 0x + 64 hex digits
#: Surrogate ids: BIGINT on PostgreSQL, INTEGER (the rowid alias, hence autoincrementing) on SQLite.
ID = BigInteger().with_variant(Integer(), "sqlite")
ADDRESS = 42


def big(nullable: bool = False, default: int | None = None) -> Any:
    return Field(default=default, sa_column=Column(BigInt(), nullable=nullable))


def _position_unique(table: str) -> Index:
    """The one unique index of an event table: the log's position (chain, block number, log index).

    The index holds one chain at a time (a rollback deletes everything above the fork block before the
    new branch is written), so a position names at most one log; and since a block hash determines its
    number, this is a stronger guarantee than uniqueness on (chain, block hash, log index). It is also
    the index the block-range queries need, and keyed by small integers instead of a random 66-character
    hash it is much cheaper to maintain on insert (one index instead of a hash-keyed unique constraint
    plus a block index: migration 0006).
    """
    return Index(f"uq_{table}_position", "chain_id", "block_number", "log_index", unique=True)


def _partial_index(name: str, column: str, *rest: str) -> Index:
    """An index of ``events`` on (chain_id, ``column``, ``rest``...) over the rows where ``column`` is set.

    SQLite and PostgreSQL use it for any query that compares ``column`` (``=``, ``IN``, ``IS NOT NULL``),
    which every query of these indexes does; the rows without a value are never looked up through it, and
    leaving them out saves a backfill about 5 % of its time (migration 0007).
    """
    where = text(f"{column} IS NOT NULL")
    return Index(name, "chain_id", column, *rest, sqlite_where=where, postgresql_where=where)


def _event_ref_indexes(table: str) -> tuple[Any, ...]:
    return (_position_unique(table),)


# ------------------------------------------------------------------------------ raw and bookkeeping


class Event(SQLModel, table=True):
    """One decoded log of one of the deployment's contracts (args: JSON, wide ints as decimal strings)."""

    __tablename__ = "events"
    __table_args__ = (
        # Unique on the log's position, see _position_unique (also the block-range index).
        Index("uq_events_position", "chain_id", "block_number", "log_index", unique=True),
        # Partial: a third of the logs have no account and half no market (prices, fund income...), and
        # every lookup names one (``account = ?``, ``account IS NOT NULL``): fewer entries to write.
        _partial_index("ix_events_account", "account", "event_name", "block_number"),
        _partial_index("ix_events_market", "market_id", "event_name", "block_number"),
        Index("ix_events_name", "chain_id", "event_name", "block_number"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=ID)
    chain_id: int = Field(sa_type=BigInteger)
    block_number: int = Field(sa_type=BigInteger)
    block_hash: str = Field(max_length=HASH)
    block_timestamp: int | None = Field(default=None, sa_type=BigInteger)
    tx_hash: str = Field(max_length=HASH)
    tx_index: int = Field(sa_type=Integer)
    log_index: int = Field(sa_type=Integer)
    address: str = Field(max_length=ADDRESS)
    contract: str | None = Field(default=None, max_length=64)
    #: None for a log no ABI matches (its raw topics and data are then kept in args).
    event_name: str | None = Field(default=None, max_length=64)
    #: The ``account`` argument when the event has one (for per-account lookups).
    account: str | None = Field(default=None, max_length=ADDRESS)
    #: The ``marketId`` argument when the event has one.
    market_id: int | None = Field(default=None, sa_type=BigInteger)
    args: dict[str, Any] = Field(sa_column=Column(JsonDoc, nullable=False))


class Block(SQLModel, table=True):
    """A recent block the index covers: the reorg window (pruned below checkpoint - reorg_window)."""

    __tablename__ = "blocks"

    chain_id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    number: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    hash: str = Field(max_length=HASH)
    parent_hash: str = Field(max_length=HASH)
    timestamp: int = Field(sa_type=BigInteger)


class Checkpoint(SQLModel, table=True):
    """Last indexed block of a chain; written in the same transaction as the data it covers."""

    __tablename__ = "checkpoints"

    chain_id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    #: Identifies the deployment indexed (hash of its contract addresses): one database, one deployment.
    deployment_key: str = Field(max_length=HASH)
    start_block: int = Field(sa_type=BigInteger)
    block_number: int = Field(sa_type=BigInteger)
    #: None only when the index starts at genesis and nothing was indexed yet.
    block_hash: str | None = Field(default=None, max_length=HASH)


# ------------------------------------------------------------------------------ append-only histories


class _EventRef(SQLModel):
    id: int | None = Field(default=None, primary_key=True, sa_type=ID)
    chain_id: int = Field(sa_type=BigInteger)
    block_number: int = Field(sa_type=BigInteger)
    block_hash: str = Field(max_length=HASH)
    block_timestamp: int | None = Field(default=None, sa_type=BigInteger)
    tx_hash: str = Field(max_length=HASH)
    log_index: int = Field(sa_type=Integer)


class PositionChangeRow(_EventRef, table=True):
    """Exchange.PositionChanged: every trade, liquidation and deleverage fill."""

    __tablename__ = "position_changes"
    __table_args__ = (
        *_event_ref_indexes("position_changes"),
        Index("ix_position_changes_account", "chain_id", "account"),
    )

    account: str = Field(max_length=ADDRESS)
    market_id: int = Field(sa_type=BigInteger)
    reason: int  # 0 trade, 1 liquidation, 2 deleverage
    size_delta: int = big()
    price: int = big()
    size_after: int = big()
    entry_price_after: int = big()
    entry_funding_index_after: int = big()
    realized_pnl: int = big()
    funding_paid: int = big()
    fee: int = big()
    collateral_after: int = big()


class LiquidationRow(_EventRef, table=True):
    """Exchange.Liquidated."""

    __tablename__ = "liquidations"
    __table_args__ = (
        *_event_ref_indexes("liquidations"),
        Index("ix_liquidations_account", "chain_id", "account"),
    )

    account: str = Field(max_length=ADDRESS)
    market_id: int = Field(sa_type=BigInteger)
    liquidator: str = Field(max_length=ADDRESS)
    size_closed: int = big()
    price: int = big()
    penalty: int = big()
    keeper_reward: int = big()
    fund_share: int = big()
    full: bool
    account_value_before: int = big()
    maintenance_margin_before: int = big()
    collateral_after: int = big()


class FundFlowRow(_EventRef, table=True):
    """InsuranceFund.FundIncome (direction 'income', kind 0 fee / 1 penalty / 2 donation) and FundPayout."""

    __tablename__ = "fund_flows"
    __table_args__ = _event_ref_indexes("fund_flows")

    direction: str = Field(max_length=8)  # 'income' | 'payout'
    kind: int | None = None  # IncomeKind for income, None for payouts
    account: str = Field(max_length=ADDRESS)
    to_address: str | None = Field(default=None, max_length=ADDRESS)  # payouts: who was paid (the vault)
    amount: int = big()  # income: amount; payout: paid
    requested: int | None = big(nullable=True)  # payouts only
    balance_after: int = big()


class BadDebtRow(_EventRef, table=True):
    """Exchange.BadDebtSettled."""

    __tablename__ = "bad_debts"
    __table_args__ = _event_ref_indexes("bad_debts")

    account: str = Field(max_length=ADDRESS)
    debt: int = big()
    paid_by_fund: int = big()
    socialized: int = big()


class AdlEventRow(_EventRef, table=True):
    """Exchange.AutoDeleveraged."""

    __tablename__ = "adl_events"
    __table_args__ = _event_ref_indexes("adl_events")

    account: str = Field(max_length=ADDRESS)
    market_id: int = Field(sa_type=BigInteger)
    size_closed: int = big()
    price: int = big()
    realized_pnl: int = big()
    rank_score: int = big()
    market_trader_pnl_after: int = big()
    vault_assets_after: int = big()


class FundingSettlementRow(_EventRef, table=True):
    """Exchange.FundingSettled."""

    __tablename__ = "funding_settlements"
    __table_args__ = _event_ref_indexes("funding_settlements")

    market_id: int = Field(sa_type=BigInteger)
    period: int = big()
    rate_wad: int = big()
    mark_price: int = big()
    index_after: int = big()
    long_size: int = big()
    short_size: int = big()


class TierChangeRow(_EventRef, table=True):
    """Exchange.TierChanged."""

    __tablename__ = "tier_changes"
    __table_args__ = _event_ref_indexes("tier_changes")

    account: str = Field(max_length=ADDRESS)
    old_tier: int
    new_tier: int
    trades: int = big()


class OraclePriceRow(_EventRef, table=True):
    """OracleHub.PriceRefreshed."""

    __tablename__ = "oracle_prices"
    __table_args__ = (
        *_event_ref_indexes("oracle_prices"),
        Index("ix_oracle_prices_market", "chain_id", "market_id"),
    )

    market_id: int = Field(sa_type=BigInteger)
    primary_price: int = big()
    secondary_price: int = big()
    ema_price: int = big()
    mark_price: int = big()


# ------------------------------------------------------------------------------ current state


class AccountRow(SQLModel, table=True):
    """An account's current state: collateral (latest collateral-carrying event), trade count, tier."""

    __tablename__ = "accounts"

    chain_id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    address: str = Field(max_length=ADDRESS, primary_key=True)
    collateral: int = big(default=0)
    trades: int = Field(default=0, sa_type=BigInteger)
    tier: int = 0  # 0 novice, 1 junior, 2 senior, 3 professional
    educated: bool = False
    certified: bool = False


class PositionRow(SQLModel, table=True):
    """A position's current state (latest PositionChanged of the account in the market); size 0 when flat."""

    __tablename__ = "positions"

    chain_id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    account: str = Field(max_length=ADDRESS, primary_key=True)
    market_id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    size: int = big(default=0)
    entry_price: int = big(default=0)
    entry_funding_index: int = big(default=0)
    updated_block: int = Field(default=0, sa_type=BigInteger)


class MarketRow(SQLModel, table=True):
    """A market's current state, from the Exchange's and the OracleHub's events."""

    __tablename__ = "markets"

    chain_id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    market_id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    listed: bool = False
    symbol: str | None = Field(default=None, max_length=64)
    mmr_bps: int | None = big(nullable=True)
    long_oi_cap: int | None = big(nullable=True)
    short_oi_cap: int | None = big(nullable=True)
    funding_index: int = big(default=0)
    last_funding_period: int | None = big(nullable=True)
    last_funding_rate: int = big(default=0)
    #: Open interest in base units (Σ sizes of longs / of shorts), maintained from position changes.
    long_size: int = big(default=0)
    short_size: int = big(default=0)
    adl_active: bool = False
    #: OracleHub: circuit breaker (reduce-only until this timestamp) and guardian pause.
    breaker_until: int | None = big(nullable=True)
    paused: bool = False
    primary_feed: str | None = Field(default=None, max_length=ADDRESS)
    secondary_feed: str | None = Field(default=None, max_length=ADDRESS)
    heartbeat: int | None = big(nullable=True)
    #: Latest PriceRefreshed.
    mark_price: int | None = big(nullable=True)
    primary_price: int | None = big(nullable=True)
    secondary_price: int | None = big(nullable=True)
    ema_price: int | None = big(nullable=True)
    price_block: int | None = Field(default=None, sa_type=BigInteger)
    price_timestamp: int | None = Field(default=None, sa_type=BigInteger)


class ProtocolStateRow(SQLModel, table=True):
    """Chain-wide totals: insurance fund balance and cumulative flows, bad debt, socialized loss."""

    __tablename__ = "protocol_state"

    chain_id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    #: InsuranceFund balance as of its latest event (balanceAfter); direct token transfers are not seen.
    fund_balance: int = big(default=0)
    fund_fee_income: int = big(default=0)
    fund_penalty_income: int = big(default=0)
    fund_donations: int = big(default=0)
    fund_payouts: int = big(default=0)
    total_bad_debt: int = big(default=0)
    total_socialized_loss: int = big(default=0)
    #: LiquidityVault.totalSocializedLoss as of its latest SocializedLoss event.
    vault_socialized_loss: int = big(default=0)


class RiskParamsRow(SQLModel, table=True):
    """Exchange.RiskParamsSet (latest); absent while the constructor's defaults apply."""

    __tablename__ = "risk_params"

    chain_id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    trading_fee_bps: int = big()
    fund_fee_bps: int = big()
    liquidation_bps: int = big()
    target_bps: int = big()
    penalty_bps: int = big()
    min_remaining_notional: int = big()
    adl_trigger_bps: int = big()
    adl_target_bps: int = big()
    max_funding_rate_wad: int = big()
    funding_period: int = big()
    account_notional_cap: int = big()
    global_oi_cap: int = big()


class TierLimitsRow(SQLModel, table=True):
    """Exchange.TierLimitsSet (latest per tier); absent while the constructor's defaults apply."""

    __tablename__ = "tier_limits"

    chain_id: int = Field(sa_type=BigInteger, primary_key=True, sa_column_kwargs={"autoincrement": False})
    tier: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    max_leverage: int = big()
    max_order_notional: int = big()


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a SQLModel table class (typed, for the type checker)."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


EVENTS = table_of(Event)
BLOCKS = table_of(Block)
CHECKPOINTS = table_of(Checkpoint)
POSITION_CHANGES = table_of(PositionChangeRow)
LIQUIDATIONS = table_of(LiquidationRow)
FUND_FLOWS = table_of(FundFlowRow)
BAD_DEBTS = table_of(BadDebtRow)
ADL_EVENTS = table_of(AdlEventRow)
FUNDING_SETTLEMENTS = table_of(FundingSettlementRow)
TIER_CHANGES = table_of(TierChangeRow)
ORACLE_PRICES = table_of(OraclePriceRow)
ACCOUNTS = table_of(AccountRow)
POSITIONS = table_of(PositionRow)
MARKETS = table_of(MarketRow)
PROTOCOL_STATE = table_of(ProtocolStateRow)
RISK_PARAMS = table_of(RiskParamsRow)
TIER_LIMITS = table_of(TierLimitsRow)

#: The append-only tables (rows deleted above the fork block on a rollback).
APPEND_ONLY = [
    POSITION_CHANGES,
    LIQUIDATIONS,
    FUND_FLOWS,
    BAD_DEBTS,
    ADL_EVENTS,
    FUNDING_SETTLEMENTS,
    TIER_CHANGES,
    ORACLE_PRICES,
]

#: Every table of the indexer.
TABLES = [
    EVENTS,
    BLOCKS,
    CHECKPOINTS,
    *APPEND_ONLY,
    ACCOUNTS,
    POSITIONS,
    MARKETS,
    PROTOCOL_STATE,
    RISK_PARAMS,
    TIER_LIMITS,
]

metadata = SQLModel.metadata
