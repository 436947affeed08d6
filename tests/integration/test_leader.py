"""Leader election on PostgreSQL: failover after kill -9, fencing of a paused (SIGSTOP) leader, never
two leaders writing at once. Nodes are real processes (tests/integration/leader_node.py)."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import text

from keeper.leader import LeaderElector, LostLeadership, lock_key
from keeper.store.engine import make_engine
from keeper.store.migrate import upgrade
from keeper.store.testdb import DatabaseUnavailable, throwaway_database

pytestmark = pytest.mark.integration

NODE = Path(__file__).with_name("leader_node.py")
KEY = lock_key(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
TAKEOVER_LIMIT = 15.0


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    try:
        with throwaway_database("postgres", tmp_path) as url:
            engine = make_engine(url)
            try:
                upgrade(engine)
                with engine.begin() as conn:
                    conn.execute(
                        text(
                            "CREATE TABLE leader_log (id serial PRIMARY KEY, node text NOT NULL, "
                            "epoch bigint NOT NULL, at timestamptz NOT NULL)"
                        )
                    )
            finally:
                engine.dispose()
            yield url
    except DatabaseUnavailable as exc:
        pytest.fail(str(exc))


@dataclass
class Cluster:
    url: str
    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    events: queue.Queue[tuple[float, str, str]] = field(default_factory=queue.Queue)
    seen: list[tuple[float, str, str]] = field(default_factory=list)

    def start(self, node: str) -> None:
        proc = subprocess.Popen(
            [sys.executable, str(NODE), self.url, str(KEY), node],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.procs[node] = proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.events.put((time.monotonic(), node, line.strip()))

        threading.Thread(target=pump, daemon=True).start()

    def wait(self, pred: object, timeout: float) -> tuple[float, str, str]:
        """The first event (time, node, line) matching ``pred(node, line)``, seen or upcoming."""
        assert callable(pred)
        for ev in self.seen:
            if pred(ev[1], ev[2]):
                return ev
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:g} s; events: {self.seen[-20:]}")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(ev)
            if pred(ev[1], ev[2]):
                return ev

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            p.wait(timeout=10)


@pytest.fixture
def cluster(pg_url: str) -> Iterator[Cluster]:
    c = Cluster(pg_url)
    try:
        yield c
    finally:
        c.stop()


def log_rows(url: str) -> list[tuple[str, int, float]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT node, epoch, extract(epoch from at) FROM leader_log ORDER BY at, id")
            ).all()
    finally:
        engine.dispose()
    return [(str(r[0]), int(r[1]), float(r[2])) for r in rows]


def assert_no_two_leaders(url: str) -> list[tuple[str, int]]:
    """Every epoch belongs to one node; in time order the epochs never go back (terms don't overlap)."""
    rows = log_rows(url)
    assert rows, "no leader wrote anything"
    owner: dict[int, str] = {}
    terms: list[tuple[str, int]] = []
    last = 0
    for node, epoch, _at in rows:
        assert owner.setdefault(epoch, node) == node, f"epoch {epoch} written by two nodes"
        assert epoch >= last, f"epoch {epoch} written after epoch {last}: two leaders at once"
        if epoch != last:
            terms.append((node, epoch))
        last = epoch
    return terms


def is_leader_line(node: str, line: str) -> bool:
    return line.startswith("LEADER ")


def test_kill_9_leader_then_another_takes_over(cluster: Cluster) -> None:
    for n in ("a", "b", "c"):
        cluster.start(n)
    _t, first, _ = cluster.wait(lambda n, line: line.startswith("WROTE "), 20)
    dead = [first]
    for _round in range(2):  # kill the leader twice: b/c, then the last one, take over
        cluster.procs[dead[-1]].kill()  # SIGKILL
        killed_at = time.monotonic()
        t, nxt, _ = cluster.wait(lambda n, line: line.startswith("WROTE ") and n not in dead, TAKEOVER_LIMIT)
        took = t - killed_at
        print(f"takeover after kill -9 of {dead[-1]}: {nxt} in {took:.2f} s")
        assert took < TAKEOVER_LIMIT
        dead.append(nxt)
    time.sleep(0.5)
    terms = assert_no_two_leaders(cluster.url)
    assert [n for n, _ in terms] == dead
    epochs = [e for _, e in terms]
    assert epochs == sorted(set(epochs))


def test_paused_leader_is_fenced_after_sigcont(cluster: Cluster) -> None:
    cluster.start("a")
    cluster.wait(lambda n, line: n == "a" and line.startswith("WROTE "), 20)
    cluster.start("b")
    time.sleep(1.5)  # b is a standby now
    assert not any(n == "b" and is_leader_line(n, line) for _, n, line in cluster.seen)
    old = cluster.procs["a"]
    old.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    t, _, line = cluster.wait(lambda n, line: n == "b" and line.startswith("WROTE "), TAKEOVER_LIMIT)
    print(f"takeover from a paused leader: {t - stopped_at:.2f} s")
    assert t - stopped_at < TAKEOVER_LIMIT
    b_epoch = int(line.split()[1])
    old.send_signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    t, _, refused = cluster.wait(lambda n, line: n == "a" and line.startswith("REFUSED "), 10)
    print(f"paused leader refused {t - resumed_at:.2f} s after SIGCONT: {refused}")
    assert int(refused.split()[1]) < b_epoch
    time.sleep(2.0)  # a competes again as a standby; it must not write
    rows = log_rows(cluster.url)
    a_epochs = {e for n, e, _ in rows if n == "a"}
    assert a_epochs and max(a_epochs) < b_epoch
    b_first = min(at for n, e, at in rows if n == "b")
    assert all(at < b_first for n, _e, at in rows if n == "a"), "the old leader wrote after the takeover"
    assert_no_two_leaders(cluster.url)
    assert old.poll() is None  # still running, as a standby


def test_in_process_elector_and_stale_fence(pg_url: str) -> None:
    engine = make_engine(pg_url)
    one = LeaderElector(
        engine, KEY, node_id="one", retry_interval=0.2, liveness_interval=0.5, session_timeout=3
    )
    two = LeaderElector(
        engine, KEY, node_id="two", retry_interval=0.2, liveness_interval=0.5, session_timeout=3
    )
    try:
        one.start()
        f1 = one.wait_until_leader(10)
        assert f1 is not None and f1.epoch == 1
        two.start()
        assert two.wait_until_leader(1.0) is None and not two.is_leader
        with pytest.raises(LostLeadership), engine.begin() as conn:
            two.check(conn)
        assert asyncio.run(one.assert_leader()) == f1
        one.stop()  # steps down: the lock is released at once
        f2 = two.wait_until_leader(5)
        assert f2 is not None and f2.epoch == 2
        with pytest.raises(LostLeadership, match="epoch 1, now 2"), engine.begin() as conn:
            f1.check(conn)  # a stale term's token is refused by the database
        with pytest.raises(LostLeadership):
            asyncio.run(one.assert_leader())
    finally:
        one.stop()
        two.stop()
        engine.dispose()


def test_sqlite_is_a_single_always_leader_node(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'k.db'}")
    try:
        el = LeaderElector(engine, KEY).start()
        assert el.is_leader and el.single_node
        with engine.begin() as conn:
            assert el.check(conn).epoch == 0
        assert asyncio.run(el.assert_leader()).epoch == 0
        el.stop()
    finally:
        engine.dispose()


def test_lock_key_is_per_deployment() -> None:
    a = lock_key(1, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
    assert a == lock_key(1, "0x5fbdb2315678afecb367f032d93f642f64180aa3")
    assert a != lock_key(2, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
    assert -(2**63) <= a < 2**63


def test_leader_steps_down_when_its_lock_session_dies(pg_url: str) -> None:
    engine = make_engine(pg_url)
    el = LeaderElector(
        engine, KEY, node_id="solo", retry_interval=0.2, liveness_interval=0.5, session_timeout=3
    )
    changes: list[int | None] = []
    el.on_change(lambda f: changes.append(f.epoch if f else None))
    try:
        el.start()
        assert (f1 := el.wait_until_leader(10)) is not None
        with engine.begin() as conn:  # the server ends the lock session (a DBA, a failover, a network cut)
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :a"),
                {"a": "keeper-leader solo"},
            )
        deadline = time.monotonic() + 5
        while None not in changes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert changes[:2] == [f1.epoch, None], changes  # stepped down on the failed liveness check
        f2 = el.wait_until_leader(5)  # and competes again: nobody else holds the lock
        assert f2 is not None and f2.epoch == f1.epoch + 1
    finally:
        el.stop()
        engine.dispose()
