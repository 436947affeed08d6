"""The transaction journal: every transaction the keeper signs, and every broadcast attempt of it.

Write-ahead: the manager records a transition here *before* the network action it describes, so a
process killed at any point (kill -9) restarts from the journal, reuses no nonce and loses no transaction.

Two tables (SQLite by default, PostgreSQL too):

* ``keeper_tx``: one row per (chain, sender, nonce), unique, so a nonce can never be journaled twice.
  It carries what is needed to re-sign a replacement (to, data, value, gas limit), the fees and raw
  signed bytes of the latest attempt, the state, timestamps/blocks, and the outcome (mined block, tx
  hash, receipt status, error). Never the key.
* ``keeper_tx_attempt``: one row per signed variant (original, fee bumps, a cancellation), with its
  hash, raw bytes, fees and state; a re-broadcast of the same bytes only increments ``broadcasts``.

States of a transaction (``keeper_tx.state``): allocated → signed → broadcast → mined | failed, plus
``dropped`` while no node knows it (it is re-broadcast at the same nonce). A mined transaction keeps the
hash of its block (``mined_block_hash``): while it is within the confirmation depth a reorg that orphans
it sends it back to ``dropped`` (:meth:`TxJournal.reopen`). States of an attempt:
signed → broadcast → replaced | dropped | rejected | mined.

The models are plain SQLModel tables so that the Alembic migrations can include them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, Engine, Index, Integer, Text, UniqueConstraint, func, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Field, Session, SQLModel, col, select

__all__ = ["TxState", "AttemptState", "KeeperTx", "KeeperTxAttempt", "TxJournal", "JournaledTx"]

_ID = BigInteger().with_variant(Integer(), "sqlite")


class TxState(StrEnum):
    ALLOCATED = "allocated"  # nonce reserved, nothing signed yet
    SIGNED = "signed"  # an attempt is signed and journaled, not known to be broadcast
    BROADCAST = "broadcast"  # a node accepted an attempt
    DROPPED = "dropped"  # no node knows any attempt and none is mined: to re-broadcast
    MINED = "mined"  # a receipt with status 1 (or a cancellation mined: see KeeperTx.cancelled)
    FAILED = "failed"  # mined with status 0, or the nonce was consumed by a transaction not ours

    @property
    def final(self) -> bool:
        return self in (TxState.MINED, TxState.FAILED)


IN_FLIGHT = (TxState.ALLOCATED, TxState.SIGNED, TxState.BROADCAST, TxState.DROPPED)


class AttemptState(StrEnum):
    SIGNED = "signed"
    BROADCAST = "broadcast"
    REPLACED = "replaced"
    DROPPED = "dropped"
    REJECTED = "rejected"  # the node refused it (underpriced, fee below base fee, ...)
    MINED = "mined"


def _now() -> datetime:
    return datetime.now(UTC)


class KeeperTx(SQLModel, table=True):
    __tablename__ = "keeper_tx"
    __table_args__ = (
        UniqueConstraint("chain_id", "sender", "nonce", name="uq_keeper_tx_nonce"),
        Index("ix_keeper_tx_state", "chain_id", "sender", "state"),
    )

    id: int | None = Field(default=None, sa_column=Column(_ID, primary_key=True, autoincrement=True))
    chain_id: int = Field(sa_column=Column(BigInteger(), nullable=False))
    lane: str = Field(max_length=32)
    sender: str = Field(max_length=42)
    nonce: int = Field(sa_column=Column(BigInteger(), nullable=False))
    purpose: str = Field(max_length=64)
    to_address: str = Field(max_length=42)
    data: str = Field(sa_column=Column(Text(), nullable=False))  # 0x calldata
    value: str = Field(default="0", max_length=80)  # wei, decimal text (uint256)
    gas_limit: int = Field(sa_column=Column(BigInteger(), nullable=False))
    max_fee: int | None = Field(default=None, sa_column=Column(BigInteger()))  # of the latest attempt
    priority_fee: int | None = Field(default=None, sa_column=Column(BigInteger()))
    tx_hash: str | None = Field(default=None, max_length=66)  # latest attempt
    raw_tx: str | None = Field(default=None, sa_column=Column(Text()))  # latest attempt, 0x signed bytes
    attempts: int = 0
    state: str = Field(default=TxState.ALLOCATED.value, max_length=16)
    cancelled: bool = False  # replaced by a 0-value self-transfer because its call now reverts
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    created_block: int | None = Field(default=None, sa_column=Column(BigInteger()))
    updated_block: int | None = Field(default=None, sa_column=Column(BigInteger()))
    mined_block: int | None = Field(default=None, sa_column=Column(BigInteger()))
    mined_tx_hash: str | None = Field(default=None, max_length=66)
    mined_block_hash: str | None = Field(default=None, max_length=66)  # tells a reorg that orphaned it
    receipt_status: int | None = None
    error: str | None = Field(default=None, sa_column=Column(Text()))


class KeeperTxAttempt(SQLModel, table=True):
    __tablename__ = "keeper_tx_attempt"
    __table_args__ = (
        UniqueConstraint("tx_id", "seq", name="uq_keeper_tx_attempt_seq"),
        Index("ix_keeper_tx_attempt_hash", "tx_hash"),
    )

    id: int | None = Field(default=None, sa_column=Column(_ID, primary_key=True, autoincrement=True))
    tx_id: int = Field(sa_column=Column(_ID, nullable=False, index=True))
    seq: int
    kind: str = Field(default="tx", max_length=8)  # "tx" | "cancel"
    tx_hash: str = Field(max_length=66)
    raw_tx: str = Field(sa_column=Column(Text(), nullable=False))
    max_fee: int = Field(sa_column=Column(BigInteger(), nullable=False))
    priority_fee: int = Field(sa_column=Column(BigInteger(), nullable=False))
    gas_limit: int = Field(sa_column=Column(BigInteger(), nullable=False))
    state: str = Field(default=AttemptState.SIGNED.value, max_length=16)
    broadcasts: int = 0
    error: str | None = Field(default=None, sa_column=Column(Text()))
    created_at: datetime = Field(default_factory=_now)
    created_block: int | None = Field(default=None, sa_column=Column(BigInteger()))


TABLES = [KeeperTx.__table__, KeeperTxAttempt.__table__]  # type: ignore[attr-defined]


@dataclass
class JournaledTx:
    """A journal row with its attempts (detached copies: safe to read after the session closed)."""

    tx: KeeperTx
    attempts: list[KeeperTxAttempt] = field(default_factory=list)

    @property
    def latest(self) -> KeeperTxAttempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def live(self) -> KeeperTxAttempt | None:
        """The latest attempt a node may hold (not rejected)."""
        for a in reversed(self.attempts):
            if a.state != AttemptState.REJECTED:
                return a
        return None

    @property
    def hashes(self) -> list[str]:
        return [a.tx_hash for a in self.attempts]


class TxJournal:
    """The few queries the transaction manager needs; each call is one short database transaction."""

    def __init__(self, engine: Engine | str, create: bool = True) -> None:
        if isinstance(engine, str):
            from keeper.store.engine import make_engine

            engine = make_engine(engine)
        from keeper.store.engine import for_writes

        self.engine = for_writes(engine)
        if create:
            SQLModel.metadata.create_all(engine, tables=TABLES)
            _add_missing_columns(engine)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- nonces and lanes -------------------------------------------------------------------------
    def next_nonce(self, chain_id: int, sender: str) -> int:
        """One above the highest nonce ever journaled for ``sender`` (0 when none)."""
        with self._session() as s:
            top = s.exec(
                select(func.max(KeeperTx.nonce)).where(
                    KeeperTx.chain_id == chain_id, KeeperTx.sender == sender
                )
            ).one()
        return 0 if top is None else int(top) + 1

    def lanes(self, chain_id: int, sender: str) -> set[str]:
        with self._session() as s:
            rows = s.exec(
                select(KeeperTx.lane)
                .where(KeeperTx.chain_id == chain_id, KeeperTx.sender == sender)
                .distinct()
            ).all()
        return set(rows)

    # -- writes -----------------------------------------------------------------------------------
    def allocate(self, tx: KeeperTx) -> KeeperTx:
        """Inserts a new row (state allocated); the unique (chain, sender, nonce) refuses a reused nonce."""
        with self._session() as s:
            s.add(tx)
            s.commit()
            s.refresh(tx)
        return tx

    def add_attempt(
        self, tx_id: int, attempt: KeeperTxAttempt, *, block: int | None = None, cancelled: bool | None = None
    ) -> KeeperTxAttempt:
        """Journals a newly signed attempt and makes it the row's latest (row state → signed)."""
        with self._session() as s:
            row = s.get(KeeperTx, tx_id)
            assert row is not None
            attempt.tx_id = tx_id
            attempt.seq = row.attempts
            attempt.created_block = block
            row.attempts += 1
            row.tx_hash, row.raw_tx = attempt.tx_hash, attempt.raw_tx
            row.max_fee, row.priority_fee, row.gas_limit = (
                attempt.max_fee,
                attempt.priority_fee,
                attempt.gas_limit,
            )
            if row.state in (TxState.ALLOCATED, TxState.DROPPED):
                row.state = TxState.SIGNED.value
            if cancelled is not None:
                row.cancelled = cancelled
            row.updated_at, row.updated_block = _now(), block if block is not None else row.updated_block
            s.add(attempt)
            s.add(row)
            s.commit()
            s.refresh(attempt)
        return attempt

    def set_attempt(
        self,
        attempt_id: int,
        state: AttemptState,
        *,
        error: str | None = None,
        broadcast: bool = False,
        tx_state: TxState | None = None,
        block: int | None = None,
    ) -> None:
        """Updates an attempt (and optionally its transaction's state) in one transaction."""
        with self._session() as s:
            a = s.get(KeeperTxAttempt, attempt_id)
            assert a is not None
            a.state = state.value
            if error is not None:
                a.error = error[:2000]
            if broadcast:
                a.broadcasts += 1
            s.add(a)
            if tx_state is not None or error is not None:
                row = s.get(KeeperTx, a.tx_id)
                assert row is not None
                if tx_state is not None and not TxState(row.state).final:
                    row.state = tx_state.value
                if error is not None:
                    row.error = error[:2000]
                row.updated_at = _now()
                if block is not None:
                    row.updated_block = block
                s.add(row)
            s.commit()

    def set_state(
        self, tx_id: int, state: TxState, *, error: str | None = None, block: int | None = None
    ) -> None:
        with self._session() as s:
            row = s.get(KeeperTx, tx_id)
            assert row is not None
            row.state = state.value
            if error is not None:
                row.error = error[:2000]
            row.updated_at = _now()
            if block is not None:
                row.updated_block = block
            s.add(row)
            s.commit()

    def finalize(
        self,
        tx_id: int,
        state: TxState,
        *,
        tx_hash: str | None,
        block: int | None,
        receipt_status: int | None,
        error: str | None = None,
        block_hash: str | None = None,
    ) -> None:
        """Records the outcome: the mined attempt → mined, every other live attempt → replaced."""
        with self._session() as s:
            row = s.get(KeeperTx, tx_id)
            assert row is not None
            row.state = state.value
            row.mined_tx_hash, row.mined_block, row.receipt_status = tx_hash, block, receipt_status
            row.mined_block_hash = block_hash
            if error is not None:
                row.error = error[:2000]
            row.updated_at, row.updated_block = _now(), block
            s.add(row)
            for a in s.exec(select(KeeperTxAttempt).where(KeeperTxAttempt.tx_id == tx_id)).all():
                if tx_hash is not None and a.tx_hash == tx_hash:
                    a.state = AttemptState.MINED.value
                elif a.state != AttemptState.REJECTED:
                    a.state = AttemptState.REPLACED.value
                s.add(a)
            s.commit()

    def reopen(self, tx_id: int, *, error: str, block: int | None = None) -> None:
        """A mined transaction orphaned by a reorg: back in flight (``dropped``), its mined attempt too,
        the outcome cleared (the manager re-broadcasts it, or takes its nonce with a cancellation)."""
        with self._session() as s:
            row = s.get(KeeperTx, tx_id)
            assert row is not None
            mined = row.mined_tx_hash
            row.state = TxState.DROPPED.value
            row.mined_tx_hash = row.mined_block_hash = None
            row.mined_block = row.receipt_status = None
            row.error = error[:2000]
            row.updated_at, row.updated_block = _now(), block
            s.add(row)
            for a in s.exec(select(KeeperTxAttempt).where(KeeperTxAttempt.tx_id == tx_id)).all():
                if a.tx_hash == mined:
                    a.state = AttemptState.DROPPED.value
                    s.add(a)
            s.commit()

    # -- reads ------------------------------------------------------------------------------------
    def _load(self, s: Session, rows: Iterable[KeeperTx]) -> list[JournaledTx]:
        rows = list(rows)
        if not rows:
            return []
        ids = [r.id for r in rows]
        attempts = s.exec(
            select(KeeperTxAttempt)
            .where(col(KeeperTxAttempt.tx_id).in_(ids))
            .order_by(col(KeeperTxAttempt.seq))
        ).all()
        by_tx: dict[int, list[KeeperTxAttempt]] = {}
        for a in attempts:
            by_tx.setdefault(a.tx_id, []).append(a)
        return [JournaledTx(r, by_tx.get(r.id or 0, [])) for r in rows]

    def in_flight(self, chain_id: int, sender: str, lane: str | None = None) -> list[JournaledTx]:
        """Every transaction of ``sender`` not yet final, by nonce."""
        with self._session() as s:
            q = select(KeeperTx).where(
                KeeperTx.chain_id == chain_id,
                KeeperTx.sender == sender,
                col(KeeperTx.state).in_([st.value for st in IN_FLIGHT]),
            )
            if lane is not None:
                q = q.where(KeeperTx.lane == lane)
            return self._load(s, s.exec(q.order_by(col(KeeperTx.nonce))).all())

    def recently_mined(self, chain_id: int, sender: str, lane: str, above_block: int) -> list[JournaledTx]:
        """Final transactions with a receipt in a block above ``above_block`` (not yet confirmed)."""
        with self._session() as s:
            q = select(KeeperTx).where(
                KeeperTx.chain_id == chain_id,
                KeeperTx.sender == sender,
                KeeperTx.lane == lane,
                col(KeeperTx.state).in_([TxState.MINED.value, TxState.FAILED.value]),
                col(KeeperTx.mined_tx_hash).is_not(None),
                col(KeeperTx.mined_block) > above_block,
            )
            return self._load(s, s.exec(q.order_by(col(KeeperTx.nonce))).all())

    def get(self, tx_id: int) -> JournaledTx | None:
        with self._session() as s:
            row = s.get(KeeperTx, tx_id)
            return self._load(s, [row])[0] if row is not None else None

    def all(self, chain_id: int, sender: str) -> list[JournaledTx]:
        with self._session() as s:
            q = select(KeeperTx).where(KeeperTx.chain_id == chain_id, KeeperTx.sender == sender)
            return self._load(s, s.exec(q.order_by(col(KeeperTx.nonce))).all())

    def delete_sender(self, chain_id: int, sender: str) -> None:
        """Tests only: forgets every row of ``sender`` on ``chain_id``."""
        with self._session() as s:
            ids = s.exec(
                select(KeeperTx.id).where(KeeperTx.chain_id == chain_id, KeeperTx.sender == sender)
            ).all()
            for a in s.exec(select(KeeperTxAttempt).where(col(KeeperTxAttempt.tx_id).in_(ids))).all():
                s.delete(a)
            for r in s.exec(select(KeeperTx).where(col(KeeperTx.id).in_(ids))).all():
                s.delete(r)
            s.commit()


def _add_missing_columns(engine: Engine) -> None:
    """Journals created before a column was added get it (the journal is not under Alembic)."""
    if "mined_block_hash" in {c["name"] for c in inspect(engine).get_columns("keeper_tx")}:
        return
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE keeper_tx ADD COLUMN mined_block_hash VARCHAR(66)"))
    except DBAPIError:  # another process added it first
        if "mined_block_hash" not in {c["name"] for c in inspect(engine).get_columns("keeper_tx")}:
            raise
