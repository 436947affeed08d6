"""The indexer's database side (synchronous; the async runner calls it in a worker thread).

Every write is one transaction that also moves the checkpoint, guarded by the checkpoint it expects
(``UPDATE ... WHERE block_number = :old AND block_hash = :old``): a kill at any instant leaves either the
whole range (data, blocks, checkpoint) or none of it, and a second writer on the same database fails
instead of doubling rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from keeper.errors import KeeperError
from keeper.indexer.decode import EventDecoder
from keeper.indexer.derive import Deriver
from keeper.indexer.prepare import (
    EVENT_COLUMNS,
    STAGED_COLUMNS,
    Prepared,
    RowsAs,
    StagedRows,
    decode_logs,
    prepare_logs,
)
from keeper.indexer.records import BlockHeader, LogRecord
from keeper.indexer.spool import mapped
from keeper.indexer.target import IndexTarget
from keeper.store.bulk import insert_wire
from keeper.store.models import BLOCKS, CHECKPOINTS, EVENTS, TABLES
from keeper.store.packed import insert_packed, readable
from keeper.store.staged import attached, insert_staged

log = logging.getLogger(__name__)


SQLITE_CACHE_KIB = 65_536  # page cache of the indexer's writes on SQLite (64 MB)
SQLITE_WAL_CHECKPOINT_BYTES = 40 << 20  # WAL size that triggers a checkpoint (default: 1,000 pages)
#: the first GiB of the database file read through a memory mapping, not read() copies (address space:
#: its pages are the OS's file cache, shared and reclaimable, not the keeper's heap)
SQLITE_MMAP_BYTES = 1 << 30


class ConcurrentWriter(KeeperError):
    """The checkpoint moved under us: another indexer writes to the same database."""


class ChainChanged(Exception):
    """The chain changed while a range was being fetched (a reorg in progress): fetch again."""


@dataclass(frozen=True)
class CheckpointState:
    chain_id: int
    deployment_key: str
    start_block: int
    number: int
    hash: str | None


@dataclass
class FetchedRange:
    """Logs of [from_block, to_block] and the headers fetched with them (at least both ends).

    The logs come either parsed (``logs``) or already prepared (``prepared``, by a decode worker).
    """

    from_block: int
    to_block: int
    logs: list[dict[str, Any]]
    headers: dict[int, BlockHeader]
    fetch_seconds: float = 0.0
    prepared: Prepared | None = field(default=None, repr=False)

    @property
    def count(self) -> int:
        """Events of the range (once prepared)."""
        return self.prepared.count if self.prepared is not None else len(self.logs)

    @property
    def parent_hash(self) -> str:
        return self.headers[self.from_block].parent_hash

    @property
    def to_hash(self) -> str:
        return self.headers[self.to_block].hash


class IndexStore:
    def __init__(self, engine: Engine, target: IndexTarget, decoder: EventDecoder, window: int) -> None:
        self.engine = engine
        self.target = target
        self.chain_id = target.chain_id
        self.decoder = decoder
        self.deriver = Deriver(decoder)
        self.window = window
        self._sqlite_page: int | None = None  # the database's page size, read once
        #: how decode workers hand this store its rows (SQLite only): "packed" (keeper.store.packed) where
        #: its connections read them, else "staged" (keeper.store.staged); None: as row tuples
        self.rows_as: RowsAs = None
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                self.rows_as = "packed" if readable(conn) else "staged"

    # ------------------------------------------------------------------------------ checkpoint

    def checkpoint(self) -> CheckpointState | None:
        with self.engine.connect() as conn:
            r = (
                conn.execute(select(CHECKPOINTS).where(CHECKPOINTS.c.chain_id == self.chain_id))
                .mappings()
                .first()
            )
        if r is None:
            return None
        return CheckpointState(
            r["chain_id"], r["deployment_key"], r["start_block"], r["block_number"], r["block_hash"]
        )

    def initialize(self, base: BlockHeader | None) -> CheckpointState:
        """Creates the checkpoint just below the start block (``base`` is that block's header)."""
        start = self.target.start_block
        cp = CheckpointState(
            self.chain_id, self.target.deployment_key, start, start - 1, base.hash if base else None
        )
        with self.engine.begin() as conn:
            conn.execute(
                insert(CHECKPOINTS).values(
                    chain_id=cp.chain_id,
                    deployment_key=cp.deployment_key,
                    start_block=cp.start_block,
                    block_number=cp.number,
                    block_hash=cp.hash,
                )
            )
            if base is not None:
                conn.execute(insert(BLOCKS).values(**base.row(self.chain_id)))
        return cp

    def check_target(self, cp: CheckpointState) -> None:
        if cp.deployment_key != self.target.deployment_key:
            raise KeeperError(
                f"the database holds the index of another deployment on chain {cp.chain_id} "
                "(different contract addresses): use a fresh database for this deployment"
            )

    # ------------------------------------------------------------------------------ window

    def lowest_block(self) -> BlockHeader | None:
        with self.engine.connect() as conn:
            r = (
                conn.execute(
                    select(BLOCKS)
                    .where(BLOCKS.c.chain_id == self.chain_id)
                    .order_by(BLOCKS.c.number)
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return None if r is None else BlockHeader(r["number"], r["hash"], r["parent_hash"], r["timestamp"])

    def window_blocks(self) -> list[tuple[int, str]]:
        """Stored (number, hash) pairs of the reorg window, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(BLOCKS.c.number, BLOCKS.c.hash)
                .where(BLOCKS.c.chain_id == self.chain_id)
                .order_by(BLOCKS.c.number.desc())
            ).all()
        return [(int(n), str(h)) for n, h in rows]

    # ------------------------------------------------------------------------------ decoding

    def decode(self, fr: FetchedRange) -> list[LogRecord]:
        """LogRecords of a range fetched with parsed logs, in chain order (dev tools and tests)."""
        ts = {n: h.timestamp for n, h in fr.headers.items()}
        return decode_logs(fr.logs, ts, self.target.contracts, self.decoder)[0]

    def prepare(self, fr: FetchedRange) -> Prepared:
        """The range's rows (in-process when no worker prepared them)."""
        if fr.prepared is None:
            ts = {n: h.timestamp for n, h in fr.headers.items()}
            p = prepare_logs(
                fr.logs, fr.from_block, fr.to_block, ts, self.chain_id, self.target.contracts,
                self.decoder, self.deriver,
            )  # fmt: skip
            if p.problem is not None:
                raise ChainChanged(p.problem)
            if p.missing_timestamps:
                raise ValueError(f"logs of blocks {list(p.missing_timestamps)} without a timestamp")
            fr.prepared = p
        return fr.prepared

    # ------------------------------------------------------------------------------ writes

    def commit_range(self, fr: FetchedRange, expected: CheckpointState) -> CheckpointState:
        """Indexes one fetched range and moves the checkpoint to its end, in one transaction."""
        return self.commit_ranges([fr], expected)

    def commit_ranges(self, frs: Sequence[FetchedRange], expected: CheckpointState) -> CheckpointState:
        """Indexes consecutive fetched ranges and moves the checkpoint to the last one's end, all in
        one transaction (a backfill writes several ranges per commit: fewer, larger transactions)."""
        prev_to, prev_hash = expected.number, expected.hash
        for fr in frs:
            if prev_to + 1 != fr.from_block:
                raise AssertionError(f"range {fr.from_block}-{fr.to_block} does not follow block {prev_to}")
            if prev_hash is not None and fr is not frs[0] and fr.parent_hash != prev_hash:
                raise AssertionError(f"range {fr.from_block}-{fr.to_block} does not link to block {prev_to}")
            prev_to, prev_hash = fr.to_block, fr.to_hash
        prepared = [self.prepare(fr) for fr in frs]
        self.deriver.begin()
        try:
            with self._transaction(any(_attaches(p) for p in prepared)) as conn:
                self._bulk_pragmas(conn)
                # The guarded checkpoint move comes first: it takes the write lock (a second writer
                # waits, then finds the checkpoint moved and fails before writing anything).
                new = self._move_checkpoint(conn, expected, frs[-1].to_block, frs[-1].to_hash)
                for fr, p in zip(frs, prepared, strict=True):
                    self._write(conn, fr, p)
                self.deriver.flush(conn)
        except BaseException:
            self.deriver.clear()  # the derived rows it computed were not stored
            raise
        self.deriver.keep()
        return new

    def commit_reorg(
        self,
        fork: tuple[int, str],
        fr: FetchedRange | None,
        expected: CheckpointState,
        older_headers: Sequence[BlockHeader] = (),
    ) -> tuple[CheckpointState, int]:
        """Rolls back above ``fork`` and indexes ``fr`` (the new chain after it), in one transaction.

        ``older_headers``: blocks below the window's lowest, when the new chain is shorter than the
        old one (the window then reaches lower).
        """
        if fr is not None and fr.from_block != fork[0] + 1:
            raise AssertionError(
                f"range {fr.from_block}-{fr.to_block} does not follow the fork block {fork[0]}"
            )
        prepared = self.prepare(fr) if fr is not None else None
        self.deriver.clear()  # a rollback rewrites derived rows: read them from the database
        with self._transaction(prepared is not None and _attaches(prepared)) as conn:
            self._bulk_pragmas(conn)
            new = self._move_checkpoint(
                conn, expected, *((fr.to_block, fr.to_hash) if fr is not None else fork)
            )
            removed = self.deriver.rollback(conn, self.chain_id, fork[0])
            conn.execute(delete(BLOCKS).where(BLOCKS.c.chain_id == self.chain_id, BLOCKS.c.number > fork[0]))
            if older_headers:
                conn.execute(insert(BLOCKS), [h.row(self.chain_id) for h in older_headers])
            if fr is not None and prepared is not None:
                self._write(conn, fr, prepared)
                self.deriver.flush(conn)
        self.deriver.clear()
        return new, removed

    @contextmanager
    def _transaction(self, staging: bool) -> Iterator[Connection]:
        """One write transaction; ``staging``: with the staging schema attached (staged rows to copy)."""
        if not staging:
            with self.engine.begin() as conn:
                yield conn
            return
        with self.engine.connect() as conn, attached(conn), conn.begin():  # attached outside the transaction
            yield conn

    def _bulk_pragmas(self, conn: Any) -> None:
        self._sqlite_page = bulk_write_pragmas(conn, self._sqlite_page)

    def _write(self, conn: Any, fr: FetchedRange, prepared: Prepared) -> None:
        staged = prepared.staged
        if staged is not None:
            if staged.spooled is not None:
                copied = _insert_spooled(conn, staged)
            elif staged.packed is not None:
                copied = insert_packed(conn, staged.packed, STAGED_COLUMNS)
            else:
                copied = insert_staged(conn, staged.blob, STAGED_COLUMNS)
            if copied.get("events", 0) != staged.events:
                raise AssertionError(f"{copied} staged rows copied, {staged.events} events expected")
            self.deriver.apply_folded(conn, self.chain_id, prepared.folded)
        elif prepared.events:
            insert_wire(conn, EVENTS, EVENT_COLUMNS, prepared.events)
            self.deriver.apply_folded(conn, self.chain_id, prepared.folded)
        rows = [
            h.row(self.chain_id) for n, h in sorted(fr.headers.items()) if fr.from_block <= n <= fr.to_block
        ]
        if rows:
            ins = postgresql.insert(BLOCKS) if conn.dialect.name == "postgresql" else sqlite.insert(BLOCKS)
            conn.execute(
                ins.on_conflict_do_update(
                    index_elements=["chain_id", "number"],
                    set_={
                        "hash": ins.excluded.hash,
                        "parent_hash": ins.excluded.parent_hash,
                        "timestamp": ins.excluded.timestamp,
                    },
                ),
                rows,
            )
        conn.execute(
            delete(BLOCKS).where(
                BLOCKS.c.chain_id == self.chain_id, BLOCKS.c.number < fr.to_block - self.window
            )
        )

    def _move_checkpoint(
        self, conn: Any, expected: CheckpointState, number: int, block_hash: str
    ) -> CheckpointState:
        c = CHECKPOINTS.c
        cond = [c.chain_id == self.chain_id, c.block_number == expected.number]
        cond.append(c.block_hash.is_(None) if expected.hash is None else c.block_hash == expected.hash)
        res = conn.execute(
            update(CHECKPOINTS).where(*cond).values(block_number=number, block_hash=block_hash)
        )
        if res.rowcount != 1:
            raise ConcurrentWriter(
                f"the checkpoint of chain {self.chain_id} moved under the indexer (expected block "
                f"{expected.number}): is another indexer writing to the same database?"
            )
        return CheckpointState(
            expected.chain_id, expected.deployment_key, expected.start_block, number, block_hash
        )

    # ------------------------------------------------------------------------------ reads

    def event_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(EVENTS.c.event_name, func.count())
                .where(EVENTS.c.chain_id == self.chain_id)
                .group_by(EVENTS.c.event_name)
            ).all()
        return {(name or "(unknown)"): int(n) for name, n in sorted(rows, key=lambda r: r[0] or "")}


def _insert_spooled(conn: Any, staged: StagedRows) -> dict[str, int]:
    """:func:`insert_packed` of the packed buffers a decode worker left in a spool file (SQLite copies
    each from the mapping; the views are released before it is unmapped)."""
    assert staged.spooled is not None
    with mapped(staged.spooled) as view:
        tables = staged.tables(view)
        try:
            return insert_packed(conn, tables, STAGED_COLUMNS)
        finally:
            for part in tables.values():
                part.release()


def _attaches(p: Prepared) -> bool:
    """Whether writing ``p`` needs the staging schema attached (rows in a staged database)."""
    return p.staged is not None and p.staged.packed is None and p.staged.spooled is None


def table_counts(engine: Engine, chain_id: int | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    with engine.connect() as conn:
        for t in TABLES:
            q = select(func.count()).select_from(t)
            if chain_id is not None:
                q = q.where(t.c.chain_id == chain_id)
            out[str(t.name)] = int(conn.execute(q).scalar() or 0)
    return out


def bulk_write_pragmas(conn: Any, page_size: int | None = None) -> int | None:
    """SQLite settings for the indexer's large write transactions (this connection only); returns the
    database's page size (read once: ``page_size`` given, it is not read again; None off SQLite).

    A bigger page cache keeps the events indexes' pages in memory instead of re-reading them from
    the OS on every range, and what it misses is read through a memory mapping (no copy: 1.05x on the
    bench chain, median of 8 pairs); a WAL checkpoint every 40 MB (10,000 pages of 4 KiB, 2,560 of 16 KiB)
    instead of every 1,000 pages copies an index page into the database once per several ranges
    instead of once per range. Both are bounded (memory stays flat in the chain's length) and neither
    touches durability: every range's data and checkpoint still commit in one transaction, and
    synchronous stays NORMAL.
    """
    if conn.dialect.name != "sqlite":
        return None
    conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    conn.exec_driver_sql(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    if page_size is None:  # fixed once the database exists (a VACUUM aside)
        page_size = int(conn.exec_driver_sql("PRAGMA page_size").scalar() or 4096)
    conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_CHECKPOINT_BYTES // page_size}")
    return page_size
