"""funding: the keeper's own funding figures per market (funding_figures)

Revision ID: 0003
Revises: 0002
Create Date: funding

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import keeper.store.types

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def big(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, keeper.store.types.BigInt(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "funding_figures",
        sa.Column("chain_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("market_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("chain_time", sa.BigInteger(), nullable=False),
        big("funding_index"),
        big("last_funding_period"),
        big("current_rate_wad"),
        big("predicted_rate_wad"),
        big("predicted_index"),
        big("next_due_at"),
        big("mark_price", nullable=True),
        big("long_size"),
        big("short_size"),
        sa.Column("settlements", sa.BigInteger(), nullable=False),
        sa.Column("last_settlement_id", sa.BigInteger(), nullable=True),
        sa.Column("matches", sa.Boolean(), nullable=False),
        sa.Column("mismatch", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("chain_id", "market_id"),
    )


def downgrade() -> None:
    op.drop_table("funding_figures")
