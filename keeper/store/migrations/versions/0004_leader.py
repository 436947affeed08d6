"""leader election: leader_epoch (the fencing token of keeper.leader)

Revision ID: 0004
Revises: 0003
Create Date: leader

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per election (advisory lock key = chain id + Exchange address): the epoch is incremented
    # by each new leader while it holds the lock; every guarded write compares it with its own.
    op.create_table(
        "leader_epoch",
        sa.Column("lock_key", sa.BigInteger(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("node", sa.String(length=100), nullable=False),
        sa.Column("acquired_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("lock_key"),
    )


def downgrade() -> None:
    op.drop_table("leader_epoch")
