"""Schema migrations applied to a database that already holds data, on SQLite and on PostgreSQL.

* 0006 (one unique index on the log's position instead of the hash-keyed unique constraint plus a
  block index): rows written at 0005 survive the upgrade (SQLite rebuilds the tables), a second log at
  the same (chain_id, block_number, log_index) is refused, and the migration goes down and up again.
* 0007 (the account and market indexes of ``events`` partial, over the rows that have one): the rows
  survive, the indexes hold only those rows, the per-account and per-market lookups still go through
  them, and the migration goes down and up again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, insert, inspect, select
from sqlalchemy.exc import IntegrityError

from keeper.store.engine import make_engine
from keeper.store.migrate import alembic_config, current_revision
from keeper.store.models import APPEND_ONLY, EVENTS, POSITION_CHANGES, TABLES, metadata

CHAIN = 31337
EVENT_TABLES = [EVENTS.name, *(t.name for t in APPEND_ONLY)]
POSITION = ["chain_id", "block_number", "log_index"]

#: what a log's rows share: its place on the chain
REF: dict[str, Any] = {
    "chain_id": CHAIN,
    "block_number": 7,
    "block_hash": "0x" + "ab" * 32,
    "block_timestamp": 1_700_000_000,
    "tx_hash": "0x" + "cd" * 32,
    "log_index": 3,
}
EVENT_ROW: dict[str, Any] = {
    **REF,
    "tx_index": 0,
    "address": "0x" + "e1" * 20,
    "contract": "Exchange",
    "event_name": "PositionChanged",
    "account": "0x" + "a1" * 20,
    "market_id": 1,
    "args": {"sizeDelta": str(10**30), "reason": 0},
}
POSITION_CHANGE_ROW: dict[str, Any] = {
    **REF,
    "account": "0x" + "a1" * 20,
    "market_id": 1,
    "reason": 0,
    "size_delta": 10**30,
    "price": 2**255 - 1,
    "size_after": 10**30,
    "entry_price_after": 3_000 * 10**18,
    "entry_funding_index_after": -(10**40),
    "realized_pnl": 0,
    "funding_paid": 0,
    "fee": 12345,
    "collateral_after": 10**24,
}


def _alembic(engine: Engine, action: Callable[..., None], revision: str) -> None:
    """``command.upgrade``/``downgrade`` as :func:`keeper.store.migrate.upgrade` runs them."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        action(cfg, revision)


def _rows(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    with engine.connect() as conn:
        return {
            t.name: [dict(r._mapping) for r in conn.execute(select(t).order_by(t.c.id))]
            for t in (EVENTS, POSITION_CHANGES)
        }


def _schema_diffs(engine: Engine) -> list[Any]:
    """Differences between the database and the models, on the indexer's tables."""
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    mine = {t.name for t in TABLES}

    def table_of(diff: Any) -> str | None:
        if isinstance(diff, list):  # column-level changes come grouped: (op, schema, table, column, ...)
            return str(diff[0][2])
        obj = diff[1]  # (op, Index | UniqueConstraint | Table | ..., ...)
        table = getattr(obj, "table", None)
        return str(table.name) if table is not None else getattr(obj, "name", None)

    return [d for d in diffs if table_of(d) in mine]


def test_0006_keeps_the_rows_and_makes_the_position_unique(
    new_db: Callable[[], str],
) -> None:
    engine = make_engine(new_db())
    try:
        _alembic(engine, command.upgrade, "0005")
        with engine.begin() as conn:
            conn.execute(insert(EVENTS), [EVENT_ROW])
            conn.execute(insert(POSITION_CHANGES), [POSITION_CHANGE_ROW])
        before = _rows(engine)
        assert len(before["events"]) == len(before["position_changes"]) == 1
        assert len(_schema_diffs(engine)) == 3 * len(EVENT_TABLES)  # 0005 is not the models' schema

        _alembic(engine, command.upgrade, "0006")
        assert current_revision(engine) == "0006"
        assert _rows(engine) == before  # ids included
        insp = inspect(engine)
        for table in EVENT_TABLES:
            indexes = {ix["name"]: ix for ix in insp.get_indexes(table)}
            position = indexes[f"uq_{table}_position"]
            assert position["unique"] and position["column_names"] == POSITION
            assert f"ix_{table}_block" not in indexes
            assert f"uq_{table}_log" not in {uc["name"] for uc in insp.get_unique_constraints(table)}
        assert _schema_diffs(engine) == []

        # Another log at the same position (a different block hash: another branch) is refused.
        other = {"block_hash": "0x" + "ef" * 32, "tx_hash": "0x" + "01" * 32}
        for t, row in ((EVENTS, EVENT_ROW), (POSITION_CHANGES, POSITION_CHANGE_ROW)):
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(insert(t), [{**row, **other}])
        # The next log of the block is fine.
        with engine.begin() as conn:
            conn.execute(insert(EVENTS), [{**EVENT_ROW, "log_index": 4}])
            conn.execute(insert(POSITION_CHANGES), [{**POSITION_CHANGE_ROW, "log_index": 4}])
        after = _rows(engine)
        assert [r["log_index"] for r in after["events"]] == [3, 4]
        assert [r["log_index"] for r in after["position_changes"]] == [3, 4]

        # Down to 0005 (the hash-keyed constraint and the block index are back) and up again.
        _alembic(engine, command.downgrade, "0005")
        assert current_revision(engine) == "0005"
        assert _rows(engine) == after
        insp = inspect(engine)
        for table in EVENT_TABLES:
            names = {ix["name"] for ix in insp.get_indexes(table)}
            assert f"ix_{table}_block" in names and f"uq_{table}_position" not in names
            assert f"uq_{table}_log" in {uc["name"] for uc in insp.get_unique_constraints(table)}
        _alembic(engine, command.upgrade, "0006")
        assert current_revision(engine) == "0006"
        assert _rows(engine) == after
        assert _schema_diffs(engine) == []
    finally:
        engine.dispose()


def _partial_predicates(engine: Engine) -> dict[str, str | None]:
    """ix_events_account / ix_events_market -> the WHERE of the index as the database stores it."""
    with engine.connect() as conn:
        sql: dict[Any, Any]
        if engine.dialect.name == "sqlite":
            sql = dict(conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'index'").all())
        else:
            sql = dict(conn.exec_driver_sql("SELECT indexname, indexdef FROM pg_indexes").all())
    out: dict[str, str | None] = {}
    for name in ("ix_events_account", "ix_events_market"):
        _, _, where = str(sql[name]).upper().partition(" WHERE ")
        out[name] = where.strip("() ") or None
    return out


def _index_entries(engine: Engine, name: str) -> int:
    """How many entries the index ``name`` of ``events`` holds, from the statistics ANALYZE gathers."""
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE events")
        if engine.dialect.name == "sqlite":  # sqlite_stat1.stat: "<entries> <rows per key prefix>..."
            stat = conn.exec_driver_sql(f"SELECT stat FROM sqlite_stat1 WHERE idx = '{name}'").scalar()
            return int(str(stat).split()[0])
        return int(
            conn.exec_driver_sql(f"SELECT reltuples FROM pg_class WHERE relname = '{name}'").scalar() or 0
        )


def _plan(engine: Engine, where: str, value: Any) -> str:
    """The plan of a lookup by account or market, as the deriver's rollback makes them."""
    sql = (
        f"SELECT * FROM events WHERE chain_id = {CHAIN} AND event_name = 'PositionChanged' "
        f"AND contract = 'Exchange' AND {where} ORDER BY block_number + 0 DESC, log_index DESC LIMIT 1"
    )
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", (value,)).all()
            return " ".join(str(r[-1]) for r in rows)
        conn.exec_driver_sql("SET enable_seqscan = off")  # a tiny table: make the planner show its index
        rows = conn.exec_driver_sql(f"EXPLAIN {sql.replace('?', '%s')}", (value,)).all()
        return " ".join(str(r[0]) for r in rows)


def test_0007_leaves_rows_without_an_account_or_market_out_of_their_indexes(
    new_db: Callable[[], str],
) -> None:
    engine = make_engine(new_db())
    try:
        _alembic(engine, command.upgrade, "0006")
        price = {**EVENT_ROW, "log_index": 4, "contract": "OracleHub", "event_name": "PriceRefreshed",
                 "account": None, "market_id": 1, "args": {"mark": "1"}}  # fmt: skip
        income = {**EVENT_ROW, "log_index": 5, "contract": "InsuranceFund", "event_name": "FundIncome",
                  "market_id": None, "args": {"amount": "2"}}  # fmt: skip
        with engine.begin() as conn:
            conn.execute(insert(EVENTS), [EVENT_ROW, price, income])
        before = _rows(engine)
        assert _partial_predicates(engine) == {"ix_events_account": None, "ix_events_market": None}
        assert _index_entries(engine, "ix_events_account") == 3

        _alembic(engine, command.upgrade, "head")
        assert current_revision(engine) == "0007"
        assert _rows(engine) == before
        assert _partial_predicates(engine) == {
            "ix_events_account": "ACCOUNT IS NOT NULL",
            "ix_events_market": "MARKET_ID IS NOT NULL",
        }
        assert _index_entries(engine, "ix_events_account") == 2  # the price has no account
        assert _index_entries(engine, "ix_events_market") == 2  # the fund income has no market
        assert "ix_events_account" in _plan(engine, "account = ?", EVENT_ROW["account"])
        assert "ix_events_market" in _plan(engine, "market_id = ?", 1)
        assert _schema_diffs(engine) == []

        _alembic(engine, command.downgrade, "0006")
        assert _partial_predicates(engine) == {"ix_events_account": None, "ix_events_market": None}
        _alembic(engine, command.upgrade, "head")
        assert _rows(engine) == before
        assert _partial_predicates(engine)["ix_events_account"] == "ACCOUNT IS NOT NULL"
    finally:
        engine.dispose()
