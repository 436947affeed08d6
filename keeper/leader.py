"""Leader election among several keeper nodes sharing one PostgreSQL database, with a fencing token.

Several nodes may run against one database; exactly one of them, the *leader*, indexes and sends
transactions, the others serve the page and stand by. There is no home-made consensus here:

* **The lock.** Each node holds a dedicated connection (its whole life) on which it calls
  ``pg_try_advisory_lock(key)`` every ``leader.retry_interval`` seconds until it gets it; the key is
  derived from the chain id and the Exchange address (:func:`lock_key`), so deployments sharing a
  server do not interfere. The holder is the leader. PostgreSQL releases the lock when the session
  ends: a killed leader (its socket closed) is replaced within ``retry_interval``.
* **A frozen or cut-off leader.** The lock session sets ``idle_session_timeout`` to
  ``leader.session_timeout``: a leader that stops talking (SIGSTOP, a stalled VM, a network cut) has
  its session ended *by the server* after that long, which frees the lock for a standby. The leader
  checks its lock connection (``SELECT 1``) every ``leader.liveness_interval`` seconds (also with TCP
  keepalives and ``tcp_user_timeout`` so a dead network fails fast) and trusts the lock only for
  ``session_timeout - 1`` seconds after the start of its last good check (its *lease*); a failed check
  or an expired lease means it steps down at once and competes again as a standby.
* **The fencing token.** Each new leader, holding the lock, increments the row of its key in the
  ``leader_epoch`` table (migration 0004) and keeps the value as *its* epoch. Every write the leader
  makes, and every transaction it is about to send, first calls :meth:`Fence.check` in the same
  database transaction: it reads the current epoch ``FOR SHARE`` and raises :class:`LostLeadership`
  unless it is still ours. Because the read holds a share lock, a new leader's increment waits for
  that transaction to commit: a write of an old leader is either committed before the new epoch exists
  or refused. A leader paused past its lease and resumed later is refused at its next guarded action
  (both locally, by the lease, and by the database, by the epoch). A transaction *sent* right after a
  successful check can still race a takeover by the check's latency; the nonce-ordered transaction
  manager makes that at most a duplicate attempt, which the contracts reject.

SQLite (the default embedded database) serves a single node: it is always the leader, with epoch 0,
and the fence checks nothing. Run several nodes only on PostgreSQL (14 or later, for
``idle_session_timeout``).

Usage (the runtime's side)::

    elector = LeaderElector.from_settings(settings, engine, chain_id, exchange_address)
    elector.start()                           # a daemon thread competes for the lock
    fence = await elector.wait_for_leadership()
    with engine.begin() as conn:
        elector.check(conn)                   # raises LostLeadership when no longer the leader
        ... write ...
    await elector.assert_leader()             # before sending a transaction
    elector.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from keeper.errors import KeeperError

if TYPE_CHECKING:
    from keeper.config import LeaderSettings, Settings

__all__ = ["Fence", "LeaderElector", "LostLeadership", "lock_key", "default_node_id"]

log = logging.getLogger("keeper.leader")

#: The lease ends this long before the server may end a silent session (seconds).
LEASE_MARGIN = 1.0


class LostLeadership(Exception):
    """This node is not (or no longer) the leader: the guarded write or transaction must not happen."""


def lock_key(chain_id: int, exchange: str) -> int:
    """The advisory lock key (a signed 64-bit integer) of one deployment: chain id + Exchange address."""
    digest = hashlib.sha256(f"zanbara-keeper-leader:{int(chain_id)}:{exchange.lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Fence:
    """The fencing token of one leadership term: ``epoch`` of election ``key``, held by ``node``."""

    key: int
    epoch: int
    node: str
    single_node: bool = False

    def check(self, conn: Connection) -> None:
        """Raises :class:`LostLeadership` unless ``conn``'s database still says ``epoch`` is current.

        Call it inside the transaction of the guarded write: on PostgreSQL the epoch row is read
        ``FOR SHARE``, so that a new leader cannot take over until this transaction ends.
        """
        if self.single_node:
            return
        row = conn.execute(
            text("SELECT epoch, node FROM leader_epoch WHERE lock_key = :k FOR SHARE"), {"k": self.key}
        ).first()
        if row is None or int(row[0]) != self.epoch:
            current = "none" if row is None else f"{int(row[0])} ({row[1]})"
            raise LostLeadership(f"node {self.node} lost the leadership: epoch {self.epoch}, now {current}")


class LeaderElector:
    """Competes for the leadership of one deployment in a daemon thread (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        key: int,
        *,
        node_id: str | None = None,
        retry_interval: float = 1.0,
        liveness_interval: float = 2.0,
        session_timeout: float = 8.0,
        connect_timeout: float = 5.0,
        enabled: bool = True,
    ) -> None:
        if session_timeout <= liveness_interval + LEASE_MARGIN:
            raise KeeperError(
                f"leader.session_timeout ({session_timeout:g} s) must exceed "
                f"leader.liveness_interval + {LEASE_MARGIN:g} s ({liveness_interval + LEASE_MARGIN:g} s)"
            )
        self.engine = engine
        self.key = key
        self.node_id = node_id or default_node_id()
        self.retry_interval = retry_interval
        self.liveness_interval = liveness_interval
        self.session_timeout = session_timeout
        self.connect_timeout = connect_timeout
        self.single_node = engine.dialect.name != "postgresql" or not enabled
        self._lock = threading.Lock()
        self._fence: Fence | None = None
        self._lease_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_engine: Engine | None = None
        self._conn: Connection | None = None
        self._callbacks: list[Callable[[Fence | None], None]] = []
        self._changed = threading.Condition(self._lock)
        if self.single_node:
            self._fence = Fence(key, 0, self.node_id, single_node=True)
            self._lease_until = float("inf")

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine, chain_id: int, exchange: str) -> LeaderElector:
        ls: LeaderSettings = settings.leader
        return cls(
            engine,
            lock_key(chain_id, exchange),
            node_id=settings.keeper.node_id,
            retry_interval=ls.retry_interval,
            liveness_interval=ls.liveness_interval,
            session_timeout=ls.session_timeout,
            connect_timeout=ls.connect_timeout,
            enabled=ls.enabled,
        )

    # ------------------------------------------------------------------------------- public API

    @property
    def is_leader(self) -> bool:
        """True while this node holds the lock and its lease is fresh (no database round trip)."""
        with self._lock:
            return self._fence is not None and time.monotonic() < self._lease_until

    @property
    def fence(self) -> Fence | None:
        """The current term's fence, or None on a standby."""
        with self._lock:
            return self._fence if self._fence is not None and time.monotonic() < self._lease_until else None

    def on_change(self, callback: Callable[[Fence | None], None]) -> None:
        """``callback(fence)`` on becoming leader, ``callback(None)`` on stepping down (in the elector's
        thread: keep it short, e.g. ``loop.call_soon_threadsafe``)."""
        self._callbacks.append(callback)

    def check(self, conn: Connection) -> Fence:
        """Local lease, then the database's epoch (in ``conn``'s transaction); :class:`LostLeadership`."""
        fence = self.fence
        if fence is None:
            raise LostLeadership(f"node {self.node_id} is not the leader")
        fence.check(conn)
        return fence

    def check_now(self) -> Fence:
        """:meth:`check` in a short transaction of its own (e.g. just before sending a transaction)."""
        if self.single_node:
            return self.check_local()
        with self.engine.begin() as conn:
            return self.check(conn)

    def check_local(self) -> Fence:
        fence = self.fence
        if fence is None:
            raise LostLeadership(f"node {self.node_id} is not the leader")
        return fence

    async def assert_leader(self) -> Fence:
        """:meth:`check_now` off the event loop: raises :class:`LostLeadership` unless still the leader."""
        self.check_local()
        if self.single_node:
            return self.check_local()
        return await asyncio.to_thread(self.check_now)

    def wait_until_leader(self, timeout: float | None = None) -> Fence | None:
        """Blocks until this node is the leader (its fence) or ``timeout`` passes (None)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                if self._fence is not None and time.monotonic() < self._lease_until:
                    return self._fence
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._changed.wait(0.5 if left is None else min(left, 0.5))

    async def wait_for_leadership(self, timeout: float | None = None) -> Fence | None:
        return await asyncio.to_thread(self.wait_until_leader, timeout)

    def start(self) -> LeaderElector:
        if self.single_node or self._thread is not None:
            return self
        if self.session_timeout < 1:
            raise KeeperError("leader.session_timeout must be at least 1 s")
        self._lock_engine = create_engine(
            self.engine.url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={
                "connect_timeout": max(1, int(self.connect_timeout)),
                "keepalives": 1,
                "keepalives_idle": max(1, int(self.liveness_interval)),
                "keepalives_interval": 1,
                "keepalives_count": 3,
                "tcp_user_timeout": int(self.session_timeout * 1000),
                "application_name": f"keeper-leader {self.node_id}"[:63],
            },
        )
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"leader-{self.node_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Steps down (closing the lock connection releases the lock at once) and ends the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.connect_timeout + self.liveness_interval + 5)
            self._thread = None
        self._close()
        if self._lock_engine is not None:
            self._lock_engine.dispose()
            self._lock_engine = None

    def __enter__(self) -> LeaderElector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------- the thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._fence is None:
                    if self._try_acquire():
                        continue
                    self._stop.wait(self.retry_interval)
                else:
                    self._stop.wait(self.liveness_interval)
                    if not self._stop.is_set():
                        self._ping()
            except Exception as exc:  # noqa: BLE001 - any failure: step down, retry later
                self._step_down(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
                self._stop.wait(self.retry_interval)
        self._step_down("stopping")

    def _connect(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._close()
            assert self._lock_engine is not None
            conn = self._lock_engine.connect()
            ms = int(self.session_timeout * 1000)
            conn.exec_driver_sql(f"SET idle_session_timeout = {ms}")
            conn.exec_driver_sql(f"SET statement_timeout = {ms}")
            self._conn = conn
        return self._conn

    def _try_acquire(self) -> bool:
        started = time.monotonic()
        conn = self._connect()
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
        if not got:
            return False
        try:
            epoch = self._bump_epoch(conn)
        except BaseException:
            self._close()  # releases the lock: another node may try
            raise
        fence = Fence(self.key, int(epoch), self.node_id)
        with self._changed:
            self._fence = fence
            self._lease_until = started + self.session_timeout - LEASE_MARGIN
            self._changed.notify_all()
        log.info("leader: %s is the leader (epoch %d)", self.node_id, fence.epoch)
        self._notify(fence)
        return True

    def _bump_epoch(self, conn: Connection) -> int:
        """Increments this key's epoch (holding the lock). A frozen old leader may hold the epoch row
        ``FOR SHARE`` in an open transaction: after ``lock_timeout`` its sessions are ended (it has lost
        the lock already, and its transaction would be refused anyway)."""
        conn.exec_driver_sql("SET lock_timeout = 2000")
        for attempt in range(5):
            try:
                return int(
                    conn.execute(
                        text(
                            "INSERT INTO leader_epoch (lock_key, epoch, node, acquired_at) "
                            "VALUES (:k, 1, :n, extract(epoch from clock_timestamp())) "
                            "ON CONFLICT (lock_key) DO UPDATE SET epoch = leader_epoch.epoch + 1, "
                            "node = excluded.node, acquired_at = excluded.acquired_at RETURNING epoch"
                        ),
                        {"k": self.key, "n": self.node_id},
                    ).scalar_one()
                )
            except DBAPIError as exc:
                code = getattr(exc.orig, "sqlstate", None)
                if code == "42P01":  # undefined_table
                    raise KeeperError(
                        "the database has no leader_epoch table: run keeper db upgrade"
                    ) from None
                if code != "55P03" or attempt == 4:  # lock_not_available
                    raise
                ended = conn.execute(
                    text(
                        "SELECT pid, pg_terminate_backend(pid) FROM pg_locks "
                        "WHERE relation = 'leader_epoch'::regclass AND granted AND pid <> pg_backend_pid()"
                    )
                ).all()
                log.warning(
                    "leader: %s ended %d session(s) of a previous leader holding the epoch row: %s",
                    self.node_id,
                    len(ended),
                    [r[0] for r in ended],
                )
        raise AssertionError("unreachable")

    def _ping(self) -> None:
        started = time.monotonic()
        if started >= self._lease_until:
            self._step_down("lease expired (paused longer than leader.session_timeout?)")
            return
        assert self._conn is not None
        held = self._conn.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                "AND granted AND objsubid = 1 "
                "AND classid::bigint = ((CAST(:k AS bigint) >> 32) & 4294967295) "
                "AND objid::bigint = (CAST(:k AS bigint) & 4294967295)"
            ),
            {"k": self.key},
        ).scalar()
        if not held:
            self._step_down("the lock is no longer held")
            return
        with self._changed:
            if self._fence is not None:
                self._lease_until = started + self.session_timeout - LEASE_MARGIN

    def _step_down(self, reason: str) -> None:
        with self._changed:
            was = self._fence
            self._fence = None
            self._lease_until = 0.0
            self._changed.notify_all()
        self._close()
        if was is not None:
            log.warning("leader: %s steps down (epoch %d): %s", self.node_id, was.epoch, reason)
            self._notify(None)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):
                conn.invalidate()  # drop the socket: the server releases the session lock
            with contextlib.suppress(SQLAlchemyError, OSError):
                conn.close()

    def _notify(self, fence: Fence | None) -> None:
        for cb in self._callbacks:
            try:
                cb(fence)
            except Exception:  # noqa: BLE001
                log.exception("leader: on_change callback failed")


def describe(elector: LeaderElector) -> dict[str, Any]:
    """A small status dict for /healthz or logs."""
    fence = elector.fence
    return {
        "node": elector.node_id,
        "leader": fence is not None,
        "epoch": fence.epoch if fence else None,
        "single_node": elector.single_node,
    }
