"""anomaly watch: anomaly_flags; user warnings: user_contact

Revision ID: 0005
Revises: 0004
Create Date: anomalies

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import keeper.store.types

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "anomaly_flags",
        sa.Column("id", ID, nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("account", sa.String(length=42), nullable=True),
        sa.Column("market_id", sa.BigInteger(), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("detail", keeper.store.types.JsonDoc, nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "rule", "subject", "block_number", name="uq_anomaly_flags_key"),
    )
    op.create_index("ix_anomaly_flags_block", "anomaly_flags", ["chain_id", "block_number"], unique=False)
    # The users' warning contacts (keeper.alerts.contacts.UserContact): created by tools until now.
    if not sa.inspect(op.get_bind()).has_table("user_contact"):
        op.create_table(
            "user_contact",
            sa.Column("chain_id", sa.Integer(), nullable=False),
            sa.Column("account", sa.String(length=42), nullable=False),
            sa.Column("webhook_url", sa.String(length=2048), nullable=True),
            sa.Column("webhook_format", sa.String(length=16), nullable=False),
            sa.Column("chat_id", sa.String(length=64), nullable=True),
            sa.Column("email", sa.String(length=254), nullable=True),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
            sa.PrimaryKeyConstraint("chain_id", "account"),
        )


def downgrade() -> None:
    op.drop_index("ix_anomaly_flags_block", table_name="anomaly_flags")
    op.drop_table("anomaly_flags")
