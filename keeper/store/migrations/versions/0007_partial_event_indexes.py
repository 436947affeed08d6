"""events: the account and market indexes hold only the rows that have an account or a market

Revision ID: 0007
Revises: 0006
Create Date: partial event indexes

``ix_events_account`` (chain_id, account, event_name, block_number) and ``ix_events_market``
(chain_id, market_id, event_name, block_number) held an entry for every log, although a third of the
logs carry no account (oracle prices, vault transfers) and half no market (deposits, fund income), and
every query through them names one (``account = ?``, ``market_id = ?``, ``account IS NOT NULL``). Both
become partial indexes ``WHERE <column> IS NOT NULL``, on SQLite and PostgreSQL alike: the same queries
use them, and a backfill writes ~20 % fewer index entries for ``events``.

Index statements only: no table is rebuilt and no row changes. Building the two indexes over an
existing index reads ``events`` once each.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: index name -> (the column it is about, the columns after it)
INDEXES: dict[str, tuple[str, list[str]]] = {
    "ix_events_account": ("account", ["event_name", "block_number"]),
    "ix_events_market": ("market_id", ["event_name", "block_number"]),
}


def upgrade() -> None:
    for name, (column, rest) in INDEXES.items():
        where = sa.text(f"{column} IS NOT NULL")
        op.drop_index(name, table_name="events")
        op.create_index(
            name, "events", ["chain_id", column, *rest], sqlite_where=where, postgresql_where=where
        )


def downgrade() -> None:
    for name, (column, rest) in INDEXES.items():
        op.drop_index(name, table_name="events")
        op.create_index(name, "events", ["chain_id", column, *rest])
