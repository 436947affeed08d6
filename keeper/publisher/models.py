"""The publisher's tables: insurance-fund snapshots, per-market snapshots and hourly whale snapshots.

Every row is stamped with the block it was read at (number, hash, timestamp), so anyone with an RPC
node can check a published figure with ``eth_call`` at that block. Money is in collateral units
(1e6 = $1), prices and sizes in 1e18, all :class:`~keeper.store.types.BigInt`.

History is downsampled by :func:`keeper.publisher.snapshot.downsample`: every row for 24 hours of block
time, then the first row of each hour.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Index
from sqlmodel import Field, SQLModel

from keeper.store.models import ADDRESS, HASH, ID, big, table_of
from keeper.store.types import JsonDoc

__all__ = ["FundSnapshotRow", "MarketSnapshotRow", "WhaleSnapshotRow", "FUND_SNAPSHOTS", "MARKET_SNAPSHOTS",
           "WHALE_SNAPSHOTS", "PUBLISHER_TABLES"]  # fmt: skip


class FundSnapshotRow(SQLModel, table=True):
    """The insurance fund and the platform's exposure as read at one block."""

    __tablename__ = "fund_snapshots"
    __table_args__ = (
        Index("ix_fund_snapshots_block", "chain_id", "block_number"),
        Index("ix_fund_snapshots_time", "chain_id", "block_timestamp"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=ID)
    chain_id: int = Field(sa_type=BigInteger)
    block_number: int = Field(sa_type=BigInteger)
    block_hash: str = Field(max_length=HASH)
    block_timestamp: int = Field(sa_type=BigInteger)
    #: Wall-clock time of the read (unix seconds, float): staleness is judged on it.
    read_at: float
    balance: int = big()
    total_fee_income: int = big()
    total_penalty_income: int = big()
    total_donations: int = big()
    total_payouts: int = big()
    #: Σ |size|·mark over every market, both sides (Exchange.openInterest notionals).
    total_position_value: int = big()
    #: balance / total position value in bps; None when nothing is open.
    coverage_bps: int | None = big(nullable=True)
    #: False when a market's mark price was unavailable (its notional then counts as 0).
    complete: bool = True
    #: 24 h (block time) sums from the indexer's fund_flows / bad_debts, up to index_block.
    income_24h_fees: int = big(default=0)
    income_24h_penalties: int = big(default=0)
    payouts_24h: int = big(default=0)
    bad_debt_24h: int = big(default=0)
    socialized_24h: int = big(default=0)
    #: The indexer's checkpoint when the 24 h figures were computed (None: no index yet).
    index_block: int | None = Field(default=None, sa_type=BigInteger)
    #: Live rule parameters read at the block: {"params": {...}, "tiers": [...], "global_oi": ...}.
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JsonDoc, nullable=False))


class MarketSnapshotRow(SQLModel, table=True):
    """One market at the block of a fund snapshot (``snapshot_id``)."""

    __tablename__ = "market_snapshots"
    __table_args__ = (Index("ix_market_snapshots_snapshot", "snapshot_id", "market_id"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=ID)
    snapshot_id: int = Field(sa_type=BigInteger)
    chain_id: int = Field(sa_type=BigInteger)
    block_number: int = Field(sa_type=BigInteger)
    market_id: int = Field(sa_type=BigInteger)
    symbol: str = Field(max_length=64)
    mark_ok: bool
    mark_price: int = big()
    #: OracleHub.Status: 0 active, 1 reduce-only (circuit breaker), 2 paused.
    oracle_status: int
    primary_price: int = big(default=0)
    primary_reason: int = 0
    secondary_price: int = big(default=0)
    secondary_reason: int = 0
    mmr_bps: int = big()
    long_size: int = big()
    short_size: int = big()
    long_notional: int = big()
    short_notional: int = big()
    long_oi_cap: int = big()
    short_oi_cap: int = big()
    funding_index: int = big()
    last_funding_rate: int = big()
    last_funding_period: int = big()
    next_funding_rate: int = big()
    next_funding_due: int = big()
    adl_ok: bool = True
    adl_trader_pnl: int = big(default=0)
    adl_vault_assets: int = big(default=0)
    adl_active: bool = False


class WhaleSnapshotRow(SQLModel, table=True):
    """One of the largest positions at an hourly snapshot, anonymized (salted hash, truncated)."""

    __tablename__ = "whale_snapshots"
    __table_args__ = (Index("ix_whale_snapshots_time", "chain_id", "taken_at", "market_id"),)

    id: int | None = Field(default=None, primary_key=True, sa_type=ID)
    chain_id: int = Field(sa_type=BigInteger)
    #: Block time of the snapshot (the fund snapshot's block) and its block.
    taken_at: int = Field(sa_type=BigInteger)
    block_number: int = Field(sa_type=BigInteger)
    market_id: int = Field(sa_type=BigInteger)
    rank: int
    account_id: str = Field(max_length=ADDRESS)
    side: str = Field(max_length=5)  # 'long' | 'short'
    size: int = big()
    notional: int = big()
    #: Share of the market side's open interest (both sides summed), bps.
    share_bps: int
    band: str = Field(max_length=16)


FUND_SNAPSHOTS = table_of(FundSnapshotRow)
MARKET_SNAPSHOTS = table_of(MarketSnapshotRow)
WHALE_SNAPSHOTS = table_of(WhaleSnapshotRow)
PUBLISHER_TABLES = [FUND_SNAPSHOTS, MARKET_SNAPSHOTS, WHALE_SNAPSHOTS]
