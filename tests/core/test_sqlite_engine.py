"""SQLite settings the keeper relies on, on real database files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from keeper.indexer.writer import SQLITE_MMAP_BYTES, SQLITE_WAL_CHECKPOINT_BYTES, bulk_write_pragmas
from keeper.store.engine import SQLITE_PAGE_SIZE, make_engine


def _pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as c:
        return c.execute(f"PRAGMA {name}").fetchone()[0]


def test_a_new_database_gets_large_pages_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        assert bulk_write_pragmas(conn) == 16_384  # the page size, for the writer to keep
        checkpoint_pages = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        # the writer reads pages through a mapping of the file (this SQLite is built with mmap support)
        assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == SQLITE_MMAP_BYTES
    engine.dispose()
    assert _pragma(path, "page_size") == SQLITE_PAGE_SIZE == 16_384
    assert _pragma(path, "journal_mode") == "wal"
    assert checkpoint_pages == SQLITE_WAL_CHECKPOINT_BYTES // 16_384  # 40 MB of WAL, whatever the pages


def test_an_existing_database_keeps_its_page_size(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as c:  # as made before 16 KiB pages: 4 KiB, rollback journal
        c.execute("CREATE TABLE t (x INTEGER)")
        c.execute("INSERT INTO t VALUES (1)")
    assert _pragma(path, "page_size") == 4096
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        assert bulk_write_pragmas(conn) == 4096
        assert (
            conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == SQLITE_WAL_CHECKPOINT_BYTES // 4096
        )
        conn.exec_driver_sql("INSERT INTO t VALUES (2)")
    engine.dispose()
    assert _pragma(path, "page_size") == 4096
    with sqlite3.connect(path) as c:
        assert [r[0] for r in c.execute("SELECT x FROM t ORDER BY x")] == [1, 2]
