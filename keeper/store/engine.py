"""One engine factory for every database URL the keeper accepts.

* SQLite (default, embedded): WAL journal, ``synchronous=NORMAL``, a busy timeout, and transactions
  that really begin at ``BEGIN`` (pysqlite's own implicit transaction handling is switched off so that
  reads and writes of one unit of work share one transaction).
* PostgreSQL: ``postgresql://`` and ``postgres://`` are rewritten to ``postgresql+psycopg://``
  (psycopg 3).

JSON columns are (de)serialized with orjson on both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from keeper.errors import KeeperError
from keeper.store import packed  # noqa: F401 - imported before any connection: all read packed rows

__all__ = ["make_engine", "normalize_url", "redact"]

DEFAULT_BUSY_TIMEOUT_MS = 10_000


SQLITE_PAGE_SIZE = 16_384


def _json_dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def normalize_url(url: str) -> str:
    """The SQLAlchemy URL the keeper uses for ``url`` (driver made explicit for PostgreSQL)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(normalize_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def make_engine(url: str, *, echo: bool = False, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Engine:
    """An engine for ``url`` (sqlite:///path or postgresql[+psycopg]://...); KeeperError when unusable."""
    try:
        u = make_url(normalize_url(url))
    except ArgumentError:
        raise KeeperError(
            f"invalid database URL {url!r}: use sqlite:///path or postgresql://user@host/db"
        ) from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(u, echo=echo, busy_timeout_ms=busy_timeout_ms)
    if backend == "postgresql":
        if u.get_driver_name() != "psycopg":
            raise KeeperError(
                f"unsupported PostgreSQL driver {u.get_driver_name()!r}: use postgresql+psycopg://"
            )
        return create_engine(
            u,
            echo=echo,
            pool_pre_ping=True,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
        )
    raise KeeperError(f"unsupported database {backend!r}: use sqlite:///path or postgresql://...")


def for_writes(engine: Engine) -> Engine:
    """``engine`` whose SQLite transactions take the write lock at BEGIN (no-op on PostgreSQL)."""
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(sqlite_immediate=True)


def _sqlite_engine(u: Any, *, echo: bool, busy_timeout_ms: int) -> Engine:
    db = u.database
    memory = not db or db == ":memory:" or str(u.query.get("mode", "")) == "memory"
    if not memory:
        path = Path(db)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KeeperError(f"cannot create the database folder {path.parent}: {exc.strerror}") from None
    engine = create_engine(
        u,
        echo=echo,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        # 16 KiB pages for a new database (ignored by an existing one): the events tables' rows and
        # index entries are large; a backfill inserts 15-20 % faster than with the 4 KiB default
        # (docs/benchmarks.md). Must precede WAL, which fixes the page size.
        cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.close()

    # Writers that read before they write (publisher, transaction journal, funding figures) begin with
    # BEGIN IMMEDIATE (``for_writes(engine)``): they take the write lock up front and queue on
    # busy_timeout, instead of failing at once with "database is locked" (SQLITE_BUSY_SNAPSHOT: a
    # deferred transaction that read an old snapshot cannot upgrade to a writer). Readers keep plain
    # BEGIN: in WAL mode they never wait for a writer.
    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
