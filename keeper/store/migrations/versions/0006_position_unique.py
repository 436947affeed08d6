"""event tables: one unique index on the log's position instead of a hash-keyed unique constraint

Revision ID: 0006
Revises: 0005
Create Date: position unique

``events`` and the append-only histories had a UNIQUE constraint on (chain_id, block_hash, log_index)
(uq_<table>_log, an index keyed by a random 66-character hash, costly to maintain on insert) plus a
non-unique index on (chain_id, block_number[, log_index]) (ix_<table>_block). Both are replaced by one
unique index on the log's position, uq_<table>_position (chain_id, block_number, log_index): the index
holds one chain at a time (a rollback deletes everything above the fork block before re-indexing) and a
block hash determines its number, so this is a stronger guarantee, and it serves the block-range
queries.

SQLite cannot drop a table-level UNIQUE constraint: batch mode rebuilds those tables (rows kept, ids
included). PostgreSQL gets plain ALTER TABLE / CREATE INDEX / DROP INDEX statements.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The event tables and the columns of their former ix_<table>_block index.
TABLES: dict[str, list[str]] = {
    "events": ["chain_id", "block_number", "log_index"],
    **{
        t: ["chain_id", "block_number"]
        for t in (
            "position_changes",
            "liquidations",
            "fund_flows",
            "bad_debts",
            "adl_events",
            "funding_settlements",
            "tier_changes",
            "oracle_prices",
        )
    },
}
POSITION = ["chain_id", "block_number", "log_index"]


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, recreate="auto") as batch_op:
            batch_op.drop_constraint(f"uq_{table}_log", type_="unique")
            batch_op.drop_index(f"ix_{table}_block")
            batch_op.create_index(f"uq_{table}_position", POSITION, unique=True)


def downgrade() -> None:
    for table, block_columns in TABLES.items():
        with op.batch_alter_table(table, recreate="auto") as batch_op:
            batch_op.drop_index(f"uq_{table}_position")
            batch_op.create_index(f"ix_{table}_block", block_columns, unique=False)
            batch_op.create_unique_constraint(f"uq_{table}_log", ["chain_id", "block_hash", "log_index"])
