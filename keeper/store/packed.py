"""Rows handed to the SQLite writer as packed buffers that SQLite reads itself, with no scratch database.

A backfill's decode workers used to stage each range's rows in an in-memory SQLite database and send its
bytes (:mod:`keeper.store.staged`): every row was inserted twice, into that database and then into the
real tables. Here a worker packs its rows into one flat buffer per table (:func:`pack_rows`, in C) and
the writer copies each table with one ``INSERT OR ROLLBACK ... SELECT ... FROM packed_rows(?)``
(:func:`insert_packed`): ``packed_rows`` is a table-valued function over the buffer, registered on every
SQLite connection the process opens once this module is imported (``keeper/store/_packed.c`` says how).
Values keep the storage class they were packed with, so the stored rows are those the same values bound
directly would give; ``tests/core/test_staged.py`` compares the three ways, storage class by storage
class. docs/benchmarks.md has what it saves.

Without the C module (no compiler), or where Python's sqlite3 module does not let it reach its SQLite,
:data:`AVAILABLE` is False and the writer takes staged databases as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

try:
    from keeper.store import _packed  # type: ignore[attr-defined]
except ImportError:  # not built (no C compiler): staged databases instead
    _packed = None

__all__ = ["AVAILABLE", "insert_packed", "pack_rows", "readable"]


def _install() -> bool:
    if _packed is None:
        return False
    import _sqlite3  # the module whose SQLite library the function must be registered in

    return bool(_packed.install(_sqlite3.__file__))


#: rows can be packed, and every SQLite connection opened from now on reads them
AVAILABLE = _install()


def pack_rows(rows: Sequence[tuple[Any, ...]], columns: int) -> bytes:
    """``rows`` (tuples of ``columns`` values: None, int, float, str, bytes) as one packed buffer.

    A value that SQLite could not take as a bound parameter either (an int beyond 64 bits, another
    type) raises OverflowError or TypeError, as binding it would."""
    if _packed is None:
        raise RuntimeError("keeper/store/_packed.c is not built: run make setup")
    return bytes(_packed.pack_rows(rows, columns))


def readable(conn: Connection) -> bool:
    """Whether ``conn`` (a SQLite connection) reads packed rows: it was opened after this module's
    import, in a process where :data:`AVAILABLE` is True."""
    if not AVAILABLE or conn.dialect.name != "sqlite":
        return False
    try:
        conn.exec_driver_sql("SELECT count(*) FROM packed_rows(?)", (pack_rows([], 1),)).scalar()
    except Exception:  # noqa: BLE001 - "no such table: packed_rows", or anything else: not usable
        return False
    return True


def insert_packed(
    conn: Connection, packed: Mapping[str, bytes | memoryview], columns: Mapping[str, Sequence[str]]
) -> dict[str, int]:
    """Copies each table's packed rows (``packed``: table name -> :func:`pack_rows` of rows in
    ``columns[name]`` order) into the table of the same name, in the caller's transaction and in the
    packed order. Returns rows copied per table.

    ``INSERT OR ROLLBACK``, as for staged rows (:func:`keeper.store.staged.insert_staged`): a row that
    breaks a constraint fails the whole transaction, and SQLite keeps no statement journal. A malformed
    buffer fails before its first row is copied (the C reader checks all of it first).
    """
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection), "packed rows are for SQLite only"
    copied: dict[str, int] = {}
    for name, blob in packed.items():
        cols = columns[name]
        names = ", ".join(f'"{c}"' for c in cols)
        values = ", ".join(f"c{i}" for i in range(len(cols)))
        sql = f'INSERT OR ROLLBACK INTO main."{name}" ({names}) SELECT {values} FROM packed_rows(?)'
        cur = driver.execute(sql, (blob,))
        copied[name] = cur.rowcount
    return copied
