"""Rows handed to the SQLite writer as one small serialized database instead of Python objects.

The fallback of :mod:`keeper.store.packed` (packed buffers, no scratch database: half the CPU), for a
keeper built without a C compiler.

A backfill's decode workers build every range's rows; sending them to the writer as pickled tuples
cost the writer's process twice per value: unpickling it (millions of objects) and binding it to
``executemany``. Instead a worker stores the rows in an in-memory SQLite database and sends its
bytes (:func:`stage_rows`, ``sqlite3`` ``serialize``); the writer opens those bytes as an attached
schema and copies each table with one ``INSERT ... SELECT`` (:func:`insert_staged`), inside SQLite.
Measured on the benchmark chain (docs/benchmarks.md): the writer's process spends about 1 CPU-s less
per 209k events, the workers about 0.5 CPU-s more.

The staging tables have no declared types, so every value keeps the storage class it was bound with;
the real table's column affinity then converts it exactly as binding it directly would: the stored
rows are the same. SQLite only; PostgreSQL keeps ``COPY`` of the rows (:mod:`keeper.store.bulk`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection

__all__ = ["SCHEMA", "attached", "insert_staged", "stage_rows"]

#: the name the writer's connection attaches staged rows under
SCHEMA = "staged"


def stage_rows(columns: Mapping[str, Sequence[str]], rows: Mapping[str, Sequence[Sequence[Any]]]) -> bytes:
    """A serialized SQLite database of ``rows`` (table name -> rows in ``columns[name]`` order).

    Every table of ``columns`` is created, in that order and before any row, even when it has no rows:
    every staged database then has the same schema, the same root pages and the same schema cookie, and
    a statement the writer prepared for one is valid for the next (SQLite does not always re-prepare a
    cached statement after a deserialize whose schema cookie is unchanged: see :func:`insert_staged`).
    """
    unknown = sorted(set(rows) - set(columns))
    if unknown:
        raise ValueError(f"rows for tables that are not staged: {unknown}")
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=OFF")  # a scratch database: nothing to roll back
        db.execute("BEGIN")
        for name, cols in columns.items():
            quoted = ", ".join(f'"{c}"' for c in cols)
            db.execute(f'CREATE TABLE "{name}" ({quoted})')
        for name, cols in columns.items():
            if rows.get(name):
                db.executemany(f'INSERT INTO "{name}" VALUES ({", ".join("?" * len(cols))})', rows[name])
        db.execute("COMMIT")
        return db.serialize()
    finally:
        db.close()


@contextmanager
def attached(conn: Connection) -> Iterator[None]:
    """The staging schema attached to ``conn``'s SQLite connection for the block's duration.

    SQLite refuses ATTACH and DETACH inside a transaction: enter this before the transaction begins
    and leave it after it ended. The schema stays empty until :func:`insert_staged` loads bytes into it.
    """
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection), "staged rows are for SQLite only"
    driver.execute(f"ATTACH DATABASE ':memory:' AS {SCHEMA}")
    try:
        yield
    finally:
        driver.execute(f"DETACH DATABASE {SCHEMA}")


def insert_staged(conn: Connection, blob: bytes, columns: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Copies the staged tables of ``blob`` (made by :func:`stage_rows` with the same ``columns``) into
    the tables of the same name, in the caller's transaction, rows in the order they were staged.

    The connection must be inside :func:`attached`. The staged schema is checked first (the tables of
    ``columns``, in order, at the root pages :func:`stage_rows` gives them): a blob of another layout is
    refused, since statements cached for the previous blob would read it wrong. Returns rows copied per
    table.

    ``INSERT OR ROLLBACK``: a row that breaks a constraint (a position already stored) fails the whole
    transaction, which is what the writer does with any error anyway. A plain ``INSERT`` of many rows
    inside a transaction must be undoable on its own, so SQLite keeps a statement journal of every page
    it touches, in a temporary file: some 350 MB of disk writes per 209k events on the benchmark chain
    (docs/benchmarks.md), for a rollback the writer never needs.
    """
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection), "staged rows are for SQLite only"
    driver.deserialize(blob, name=SCHEMA)
    layout = driver.execute(
        f"SELECT name, rootpage FROM {SCHEMA}.sqlite_schema WHERE type = 'table' ORDER BY rootpage"
    ).fetchall()
    expected = [(name, i + 2) for i, name in enumerate(columns)]
    if layout != expected:
        raise ValueError(f"staged rows of an unexpected layout: {layout}, expected {expected}")
    copied: dict[str, int] = {}
    for name, cols in columns.items():
        names = ", ".join(f'"{c}"' for c in cols)
        cur = driver.execute(
            f'INSERT OR ROLLBACK INTO main."{name}" ({names}) '
            f'SELECT {names} FROM {SCHEMA}."{name}" ORDER BY rowid'
        )
        copied[name] = cur.rowcount
    return copied
