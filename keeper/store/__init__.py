"""The keeper's database: models (SQLModel), lossless uint256 columns, the engine factory, migrations.

* :mod:`keeper.store.models` - raw events, reorg window, checkpoint, histories and current state;
* :mod:`keeper.store.types` - ``BigInt`` (NUMERIC(78,0) on PostgreSQL, decimal TEXT on SQLite) and JSON;
* :mod:`keeper.store.engine` - ``make_engine(url)`` for SQLite (WAL) and PostgreSQL (psycopg 3);
* :mod:`keeper.store.migrate` - Alembic (``keeper db upgrade``), scripts in ``migrations/``;
* :mod:`keeper.store.dump` / :mod:`keeper.store.testdb` - table dumps and throwaway databases for tests.
"""
