"""Staged and packed rows (keeper.store.staged, keeper.store.packed): what a decode worker stages or packs
is stored exactly as the same rows inserted directly, value for value and storage class for storage
class, on a real SQLite database of the keeper's schema; a bad row or buffer fails the whole
transaction."""

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from keeper.indexer.prepare import STAGED_COLUMNS
from keeper.store import packed
from keeper.store.bulk import insert_wire
from keeper.store.engine import make_engine
from keeper.store.migrate import upgrade
from keeper.store.models import EVENTS, ORACLE_PRICES, POSITION_CHANGES
from keeper.store.packed import insert_packed, pack_rows
from keeper.store.staged import attached, insert_staged, stage_rows

TABLES = {t.name: t for t in (EVENTS, POSITION_CHANGES, ORACLE_PRICES)}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make_engine(f"sqlite:///{tmp_path / 'k.sqlite'}")
    upgrade(e)
    yield e
    e.dispose()


def _value(column: str, rng: random.Random, i: int) -> Any:
    """A wire value of the kind the decode workers send for ``column`` (edge cases included)."""
    if column in ("chain_id",):
        return 31337
    if column == "block_number":
        return 1_000 + i // 7
    if column in ("log_index", "tx_index"):
        return i
    if column.endswith("hash"):
        return "0x" + rng.randbytes(32).hex()
    if column in ("address", "account"):
        return None if rng.random() < 0.2 else "0x" + rng.randbytes(20).hex()
    if column == "args":
        return '{"amount":"' + str(rng.randint(0, 2**256 - 1)) + '"}'
    if column in ("contract", "event_name"):
        return rng.choice(["Exchange", "OracleHub", None])
    if column == "block_timestamp":
        return rng.choice([None, 1_700_000_000 + i])
    if column == "market_id":
        return rng.choice([None, 0, 1, 2**63 - 1])
    # BigInt columns arrive as decimal text (uint256 / int256 edges), small ints as ints
    return rng.choice([str(2**256 - 1), str(-(2**255)), "0", str(rng.randint(-(10**30), 10**30)), 7, None])


def _rows(name: str, n: int, seed: int) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    table = TABLES[name]

    def value(c: str, i: int) -> Any:
        v = _value(c, rng, i)
        return 7 if v is None and not table.c[c].nullable else v

    return [tuple(value(c, i) for c in STAGED_COLUMNS[name]) for i in range(n)]


def _dump(engine: Engine, name: str) -> list[tuple[Any, ...]]:
    """Every stored value with its storage class, in insertion order (id / rowid)."""
    cols = STAGED_COLUMNS[name]
    sel = ", ".join(f'"{c}", typeof("{c}")' for c in cols)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(f'SELECT {sel} FROM "{name}" ORDER BY rowid')]


def _tables(nonempty: dict[str, int], seed: int) -> dict[str, list[tuple[Any, ...]]]:
    rows = {name: _rows(name, n, seed + k) for k, (name, n) in enumerate(nonempty.items())}
    for name, cols in STAGED_COLUMNS.items():  # history rows need a unique position: block, log index
        if name in rows and "log_index" in cols:
            li = cols.index("log_index")
            rows[name] = [(*r[:li], seed * 100_000 + j, *r[li + 1 :]) for j, r in enumerate(rows[name])]
    return rows


def _copy(conn: Any, rows: dict[str, list[tuple[Any, ...]]], how: str) -> dict[str, int]:
    """The writer's copy of ``rows`` (a range's tables), "staged" or "packed"."""
    if how == "staged":
        return insert_staged(conn, stage_rows(STAGED_COLUMNS, rows), STAGED_COLUMNS)
    buffers = {n: pack_rows(rs, len(STAGED_COLUMNS[n])) for n, rs in rows.items() if rs}
    return {n: 0 for n in STAGED_COLUMNS} | insert_packed(conn, buffers, STAGED_COLUMNS)


HOW = ["staged", "packed"]


def test_the_packed_rows_module_is_built_and_installed() -> None:
    """`make setup` builds keeper/store/_packed.c; without it the packed tests would test nothing and the
    indexer would fall back to staged databases."""
    assert packed.AVAILABLE, "keeper/store/_packed.c is not built or not installed: run `make setup`"


@pytest.mark.parametrize("how", HOW)
def test_staged_rows_are_stored_as_direct_inserts_store_them(tmp_path: Path, how: str) -> None:
    direct = make_engine(f"sqlite:///{tmp_path / 'direct.sqlite'}")
    staged = make_engine(f"sqlite:///{tmp_path / 'staged.sqlite'}")
    try:
        for e in (direct, staged):
            upgrade(e)
        # several blobs in one transaction, of very different sizes (the pages of each table then sit
        # elsewhere in each blob than in the one before: the case SQLite's statement cache got wrong)
        blobs = [
            _tables({"events": 3_000, "position_changes": 1_500, "oracle_prices": 10}, 1),
            _tables({"events": 5, "oracle_prices": 900}, 2),
            _tables({}, 3),
            _tables({"events": 700, "position_changes": 2}, 4),
        ]
        with direct.begin() as conn:
            for rows in blobs:
                for name, rs in rows.items():
                    insert_wire(conn, TABLES[name], STAGED_COLUMNS[name], rs)
        with staged.connect() as conn, attached(conn), conn.begin():
            for rows in blobs:
                copied = _copy(conn, rows, how)
                assert copied == {name: len(rows.get(name, [])) for name in STAGED_COLUMNS}
        for name in TABLES:
            got = _dump(staged, name)
            assert got == _dump(direct, name)
            assert len(got) == sum(len(b.get(name, [])) for b in blobs)
        # the staging schema was detached with the transaction's end
        with staged.connect() as conn:
            schemas = [r[1] for r in conn.exec_driver_sql("PRAGMA database_list")]
        assert "staged" not in schemas and "main" in schemas
    finally:
        direct.dispose()
        staged.dispose()


def test_a_blob_of_another_layout_is_refused_and_nothing_is_written(engine: Engine) -> None:
    other = {"events": STAGED_COLUMNS["events"], "oracle_prices": STAGED_COLUMNS["oracle_prices"]}
    blob = stage_rows(other, {"events": _rows("events", 10, 5)})
    first = stage_rows(STAGED_COLUMNS, _tables({"events": 4}, 6))
    with (
        pytest.raises(ValueError, match="unexpected layout"),
        engine.connect() as conn,
        attached(conn),
        conn.begin(),
    ):
        insert_staged(conn, first, STAGED_COLUMNS)
        insert_staged(conn, blob, STAGED_COLUMNS)
    assert _dump(engine, "events") == []  # the transaction rolled back, the first blob's rows too


@pytest.mark.parametrize("how", HOW)
def test_a_staged_event_already_stored_fails_the_whole_transaction(engine: Engine, how: str) -> None:
    """The copy is ``INSERT OR ROLLBACK`` (no statement journal: see :func:`insert_staged`); a row at a
    position already taken must still fail, and take the whole transaction with it, as the writer needs
    (a range's data and checkpoint together, or neither)."""
    stored = _tables({"events": 5, "position_changes": 3}, 7)
    with engine.connect() as conn, attached(conn), conn.begin():
        _copy(conn, stored, how)
    before = {name: _dump(engine, name) for name in TABLES}
    fresh = _tables({"events": 40, "position_changes": 20}, 8)
    again = {"events": fresh["events"][:2] + stored["events"][3:4]}  # the last row is stored already
    with (
        pytest.raises(sqlite3.IntegrityError, match="UNIQUE"),
        engine.connect() as conn,
        attached(conn),
        conn.begin(),
    ):
        _copy(conn, fresh, how)
        _copy(conn, again, how)
    assert {name: _dump(engine, name) for name in TABLES} == before  # the first blob's rows too
    # and the database takes the next transaction as usual
    with engine.connect() as conn, attached(conn), conn.begin():
        copied = _copy(conn, fresh, how)
    assert copied["events"] == 40 and len(_dump(engine, "events")) == 45


def test_rows_for_a_table_that_is_not_staged_are_refused() -> None:
    with pytest.raises(ValueError, match="not staged"):
        stage_rows({"events": STAGED_COLUMNS["events"]}, {"liquidations": [(1,)]})


def test_a_malformed_packed_buffer_fails_before_any_row_is_copied(engine: Engine) -> None:
    """A buffer the reader cannot read to its end (cut short, a byte too many, a bad tag, no header) fails
    the copy with a clear error before its first row: the statement keeps no journal to undo rows of its
    own, so the transaction holds exactly what it held before."""
    cols = len(STAGED_COLUMNS["events"])
    good = pack_rows(_tables({"events": 30}, 9)["events"], cols)
    first = pack_rows(_tables({"events": 3}, 10)["events"], cols)
    spoiled = [good[:-1], good + b"\0", good[:12] + b"\x09" + good[13:], b"PKR0" + good[4:], b""]
    with engine.connect() as conn, conn.begin():
        insert_packed(conn, {"events": first}, STAGED_COLUMNS)
        for bad in spoiled:
            with pytest.raises(sqlite3.OperationalError, match="malformed packed rows"):
                insert_packed(conn, {"events": bad}, STAGED_COLUMNS)
            assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar() == 3
        assert insert_packed(conn, {"events": good}, STAGED_COLUMNS) == {"events": 30}
    assert len(_dump(engine, "events")) == 33


def test_packing_refuses_what_sqlite_could_not_bind() -> None:
    with pytest.raises(OverflowError):
        pack_rows([(2**63,)], 1)
    with pytest.raises(TypeError, match="set"):
        pack_rows([({1},)], 1)
    with pytest.raises(ValueError, match="row 1 is not a tuple of 2 values"):
        pack_rows([(1, 2), (1,)], 2)
    with pytest.raises(ValueError, match="columns"):
        pack_rows([()], 0)


def test_packed_rows_wants_its_buffer(engine: Engine) -> None:
    with engine.connect() as conn, pytest.raises(Exception, match="takes the packed buffer"):
        conn.exec_driver_sql("SELECT * FROM packed_rows").all()


def test_a_sqlite_index_store_takes_packed_rows(tmp_path: Path) -> None:
    """The keeper's SQLite writer asks its decode workers for packed rows (the staged databases are the
    fallback of a keeper built without a C compiler, not something a built keeper drifts back to)."""
    from keeper.indexer.target import IndexTarget
    from keeper.indexer.testing import open_store

    engine, store = open_store(f"sqlite:///{tmp_path / 'k.sqlite'}", IndexTarget(31337, 1))
    try:
        assert store.rows_as == "packed"
    finally:
        engine.dispose()
