"""Bulk inserts on the hot path, below SQLAlchemy's per-row parameter processing.

SQLite: one ``executemany`` of plain tuples (or packed rows: :mod:`keeper.store.packed`). PostgreSQL:
``COPY ... FROM STDIN`` (psycopg 3) with the column types set; upserts: one ``executemany``. All go
through the connection of the caller's SQLAlchemy transaction, so they commit or roll back with it.
Values are converted exactly as the column types would: BigInt as decimal text on SQLite / numeric on
PostgreSQL, JSON through orjson, booleans as 0/1 on SQLite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from sqlalchemy import JSON, BigInteger, Boolean, Connection, Integer, String, Table
from sqlalchemy.types import TypeDecorator, TypeEngine

from keeper.store.types import BigInt

__all__ = ["insert_wire", "upsert_rows", "wire_big", "wire_columns", "wire_converters"]


def _json_text(v: Any) -> Any:
    return None if v is None else orjson.dumps(v).decode()


def _big_text(v: Any) -> Any:
    return None if v is None else str(int(v))


def _bool_int(v: Any) -> Any:
    return None if v is None else int(bool(v))


def _kind(t: TypeEngine[Any]) -> str:
    if isinstance(t, BigInt):
        return "big"
    if isinstance(t, TypeDecorator):  # e.g. SQLModel's AutoString over String
        t = t.impl_instance
    if isinstance(t, JSON):
        return "json"
    if isinstance(t, Boolean):
        return "bool"
    if isinstance(t, BigInteger):
        return "int8"
    if isinstance(t, Integer):
        return "int4"
    if isinstance(t, String):
        return "text"
    raise TypeError(f"no bulk conversion for column type {t!r}")


_SQLITE_CONV: dict[str, Callable[[Any], Any] | None] = {
    "big": _big_text,
    "json": _json_text,
    "bool": _bool_int,
    "int8": None,
    "int4": None,
    "text": None,
}
_PG_CONV: dict[str, Callable[[Any], Any] | None] = {
    "big": None,
    "json": None,  # none of the tables upsert_rows writes has a JSON column
    "bool": None,
    "int8": None,
    "int4": None,
    "text": None,
}


# ------------------------------------------------------------------------------ wire rows


#: "Wire" values, the same for both databases: BigInt as decimal text, JSON as text, booleans as 0/1.
#: They can be built away from the database (the indexer's decode workers) and sent as they are:
#: SQLite stores them as the column types would, PostgreSQL's COPY parses them with the column's type.
def wire_big(v: Any) -> Any:
    """A BigInt column's wire value (generated row builders inline its int case)."""
    return str(v) if type(v) is int else _big_text(v)


_WIRE_CONV: dict[str, Callable[[Any], Any] | None] = {
    "big": wire_big,
    "json": _json_text,
    "bool": _bool_int,
    "int8": None,
    "int4": None,
    "text": None,
}
#: client-side types of wire values in COPY (text format: the server parses them per column)
_WIRE_PG_TYPES = {
    "big": "text",
    "json": "text",
    "bool": "int4",
    "int8": "int8",
    "int4": "int4",
    "text": "text",
}


def wire_columns(table: Table) -> list[str]:
    """The columns a wire row of ``table`` holds, in order (all but a surrogate ``id``)."""
    return [c.name for c in table.columns if not (c.name == "id" and c.primary_key)]


def wire_converters(table: Table, names: Sequence[str]) -> list[Callable[[Any], Any] | None]:
    """Per column of ``names``: Python value -> wire value (None: already a wire value)."""
    return [_WIRE_CONV[_kind(table.c[n].type)] for n in names]


def to_wire(values: Sequence[Any], convs: Sequence[Callable[[Any], Any] | None]) -> tuple[Any, ...]:
    return tuple(v if f is None else f(v) for v, f in zip(values, convs, strict=True))


def insert_wire(conn: Connection, table: Table, names: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Inserts rows of wire values (see :func:`to_wire`) in the caller's transaction."""
    if not rows:
        return
    prep = conn.dialect.identifier_preparer
    table_name = prep.format_table(table)
    cols = ", ".join(prep.quote(n) for n in names)
    driver = conn.connection.driver_connection
    assert driver is not None
    if conn.dialect.name == "postgresql":
        types = [_WIRE_PG_TYPES[_kind(table.c[n].type)] for n in names]
        with driver.cursor() as cur, cur.copy(f"COPY {table_name} ({cols}) FROM STDIN") as copy:
            copy.set_types(types)
            for values in rows:
                copy.write_row(values)
        return
    if conn.dialect.name != "sqlite":
        raise TypeError(f"no wire inserts for {conn.dialect.name}")
    cur = driver.cursor()
    try:
        cur.executemany(f"INSERT INTO {table_name} ({cols}) VALUES ({', '.join('?' * len(names))})", rows)
    finally:
        cur.close()


def upsert_rows(
    conn: Connection, table: Table, key: Sequence[str], names: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert-or-update of rows of Python values (``names`` order) keyed by ``key``, one executemany."""
    if not rows:
        return
    prep = conn.dialect.identifier_preparer
    pg = conn.dialect.name == "postgresql"
    table_convs = _PG_CONV if pg else _SQLITE_CONV
    convs = [table_convs[_kind(table.c[n].type)] for n in names]
    todo = [(i, f) for i, f in enumerate(convs) if f is not None]
    data: list[Sequence[Any]] = list(rows)
    if todo:
        data = []
        for row in rows:
            values = list(row)
            for i, f in todo:
                values[i] = f(values[i])
            data.append(values)
    cols = ", ".join(prep.quote(n) for n in names)
    mark = "%s" if pg else "?"
    updates = ", ".join(f"{prep.quote(n)} = excluded.{prep.quote(n)}" for n in names if n not in key)
    conflict = ", ".join(prep.quote(n) for n in key)
    sql = (
        f"INSERT INTO {prep.format_table(table)} ({cols}) VALUES ({', '.join([mark] * len(names))}) "
        f"ON CONFLICT ({conflict}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING")
    )
    driver = conn.connection.driver_connection
    assert driver is not None
    cur = driver.cursor()
    try:
        cur.executemany(sql, data)
    finally:
        cur.close()
