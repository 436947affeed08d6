"""Throwaway databases for tests and benchmarks: a SQLite file or a fresh PostgreSQL database.

    with throwaway_database("postgres", tmp_path) as url: ...

PostgreSQL: the server named by ``KEEPER_TEST_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``, trust auth) gets a new database ``keeper_t_<random>``,
dropped afterwards (``WITH (FORCE)``). When nothing answers there, :class:`DatabaseUnavailable` is
raised with a message saying so: test fixtures turn it into a failure, never a skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from keeper.store.engine import normalize_url

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


class DatabaseUnavailable(RuntimeError):
    pass


def pg_admin_url() -> str:
    return normalize_url(os.environ.get("KEEPER_TEST_PG_URL", DEFAULT_PG_URL))


@contextmanager
def throwaway_database(kind: str, folder: str | Path | None = None) -> Iterator[str]:
    """Yields the URL of an empty database of ``kind`` ("sqlite" or "postgres"), removed afterwards."""
    if kind == "sqlite":
        base = Path(folder) if folder is not None else Path("/tmp")
        path = base / f"keeper_t_{secrets.token_hex(4)}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        return
    if kind != "postgres":
        raise ValueError(f"unknown database kind {kind!r}")
    admin_url = make_url(pg_admin_url())
    name = f"keeper_t_{secrets.token_hex(6)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except OperationalError as exc:
            raise DatabaseUnavailable(
                f"no PostgreSQL server answers at {admin_url.render_as_string(hide_password=True)} "
                f"({str(exc.orig).strip().splitlines()[0] if exc.orig else exc}): start one (the Makefile's "
                "test target does) or set KEEPER_TEST_PG_URL"
            ) from None
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
