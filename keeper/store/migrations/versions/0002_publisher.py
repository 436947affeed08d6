"""publisher tables: fund_snapshots, market_snapshots, whale_snapshots

Revision ID: 0002
Revises: 0001
Create Date: publisher

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import keeper.store.types

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def big(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, keeper.store.types.BigInt(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "fund_snapshots",
        sa.Column("id", ID, nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(length=66), nullable=False),
        sa.Column("block_timestamp", sa.BigInteger(), nullable=False),
        sa.Column("read_at", sa.Float(), nullable=False),
        big("balance"),
        big("total_fee_income"),
        big("total_penalty_income"),
        big("total_donations"),
        big("total_payouts"),
        big("total_position_value"),
        big("coverage_bps", nullable=True),
        sa.Column("complete", sa.Boolean(), nullable=False),
        big("income_24h_fees"),
        big("income_24h_penalties"),
        big("payouts_24h"),
        big("bad_debt_24h"),
        big("socialized_24h"),
        sa.Column("index_block", sa.BigInteger(), nullable=True),
        sa.Column(
            "params",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_fund_snapshots_block", "fund_snapshots", ["chain_id", "block_number"])
    op.create_index("ix_fund_snapshots_time", "fund_snapshots", ["chain_id", "block_timestamp"])
    op.create_table(
        "market_snapshots",
        sa.Column("id", ID, nullable=False),
        sa.Column("snapshot_id", sa.BigInteger(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("market_id", sa.BigInteger(), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("mark_ok", sa.Boolean(), nullable=False),
        big("mark_price"),
        sa.Column("oracle_status", sa.Integer(), nullable=False),
        big("primary_price"),
        sa.Column("primary_reason", sa.Integer(), nullable=False),
        big("secondary_price"),
        sa.Column("secondary_reason", sa.Integer(), nullable=False),
        big("mmr_bps"),
        big("long_size"),
        big("short_size"),
        big("long_notional"),
        big("short_notional"),
        big("long_oi_cap"),
        big("short_oi_cap"),
        big("funding_index"),
        big("last_funding_rate"),
        big("last_funding_period"),
        big("next_funding_rate"),
        big("next_funding_due"),
        sa.Column("adl_ok", sa.Boolean(), nullable=False),
        big("adl_trader_pnl"),
        big("adl_vault_assets"),
        sa.Column("adl_active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_market_snapshots_snapshot", "market_snapshots", ["snapshot_id", "market_id"])
    op.create_table(
        "whale_snapshots",
        sa.Column("id", ID, nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("taken_at", sa.BigInteger(), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("market_id", sa.BigInteger(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.String(length=42), nullable=False),
        sa.Column("side", sa.String(length=5), nullable=False),
        big("size"),
        big("notional"),
        sa.Column("share_bps", sa.Integer(), nullable=False),
        sa.Column("band", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_whale_snapshots_time", "whale_snapshots", ["chain_id", "taken_at", "market_id"])


def downgrade() -> None:
    op.drop_index("ix_whale_snapshots_time", table_name="whale_snapshots")
    op.drop_table("whale_snapshots")
    op.drop_index("ix_market_snapshots_snapshot", table_name="market_snapshots")
    op.drop_table("market_snapshots")
    op.drop_index("ix_fund_snapshots_time", table_name="fund_snapshots")
    op.drop_index("ix_fund_snapshots_block", table_name="fund_snapshots")
    op.drop_table("fund_snapshots")
