"""Alembic environment of the keeper's store.

Run through ``keeper db upgrade`` (see :mod:`keeper.store.migrate`), which passes an open connection in
``config.attributes["connection"]``. Otherwise the URL comes from the ``sqlalchemy.url`` option if set,
else from the keeper's settings (``--config`` / ``KEEPER_DATABASE__URL``).
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection

import keeper.store.models  # noqa: F401  (registers the tables)
from keeper.store.models import metadata

config = context.config


def _include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    # Only the keeper's own tables: other tables in the same database are left alone.
    if type_ == "table" and reflected and compare_to is None:
        return name in metadata.tables
    return True


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=_include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from keeper.config import load_settings
        from keeper.store.engine import normalize_url

        url = normalize_url(load_settings().database.url)
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    from keeper.config import load_settings
    from keeper.store.engine import make_engine

    url = config.get_main_option("sqlalchemy.url") or load_settings().database.url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _configure(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
