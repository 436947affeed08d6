"""Crash safety: ``keeper index`` killed with SIGKILL at random instants (through a slow RPC, so the kills
land mid-range) resumes with nothing lost and nothing doubled; SIGTERM stops it cleanly. SQLite and
PostgreSQL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from keeper.devchain.simulate import simulate
from keeper.indexer.target import IndexTarget
from keeper.indexer.testing import FaultProxy, fresh_dump
from keeper.store.dump import diff_dumps, dump_tables
from keeper.store.engine import make_engine

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KILLS = 10  # SIGKILLs per database during one backfill


def _env(deployed: Any, db_url: str, rpc_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "KEEPER_CONFIG": str(tmp_path / "none.toml"),
        "KEEPER_DATABASE__URL": db_url,
        "KEEPER_CHAIN__RPC_URLS": orjson.dumps([rpc_url]).decode(),
        "KEEPER_CHAIN__DEPLOYMENTS_FILE": str(deployed.path),
        "KEEPER_INDEXER__POLL_INTERVAL": "0.2",
        **extra,
    }


def _checkpoint(db_url: str) -> int | None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            try:
                return conn.execute(text("SELECT block_number FROM checkpoints")).scalar()
            except Exception:  # noqa: BLE001 - tables not created yet
                return None
    finally:
        engine.dispose()


def _start(env: dict[str, str], args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "keeper.cli", *args], env=env, cwd=REPO, stdout=out, stderr=out
    )


def _descendants(pid: int) -> set[int]:
    """Processes below ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = set(), [pid]
    while todo:
        kids = [c for c, pp in parent.items() if pp == todo[-1]]
        todo.pop()
        out.update(kids)
        todo.extend(kids)
    return out


def _wait_gone(pids: set[int], timeout: float = 10.0) -> None:
    """A killed indexer leaves no process behind: its decode workers exit on their own."""
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = {p for p in alive if Path(f"/proc/{p}").exists() and "zombie" not in _state(p)}
    assert not alive, f"processes left behind by the killed indexer: {sorted(alive)}"


def _state(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}") / "status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_kill_9_at_random_instants(
    deployed: Any, new_db: Callable[[], str], db_kind: str, tmp_path: Path
) -> None:
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=12, seed=11, blocks=90)
    head = w3.eth.block_number
    db = new_db()
    rng = random.Random(2024)
    seen: list[int | None] = []
    kills = 0
    # 50 ms per request: 2-block ranges, 3 in flight, so that ten kills land before the head
    with FaultProxy(url, delay=0.05) as proxy:
        env = _env(
            deployed,
            db,
            proxy.url,
            tmp_path,
            KEEPER_INDEXER__INITIAL_RANGE="2",
            KEEPER_INDEXER__MAX_RANGE="2",
            KEEPER_INDEXER__WORKERS_FROM_BLOCKS="1",  # killed with its decode workers running
        )
        for _ in range(KILLS):
            p = _start(env, ["index"], tmp_path / "index.log")
            deadline = time.monotonic() + 30
            # wait until this run is past start-up (the checkpoint moves), then kill at a random instant
            start_cp = _checkpoint(db)
            while time.monotonic() < deadline and _checkpoint(db) == start_cp and p.poll() is None:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.25))
            helpers = _descendants(p.pid)  # the decode workers (and their fork server)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait(10)
            _wait_gone(helpers)
            seen.append(_checkpoint(db))
            if seen[-1] == head:
                break
        r = subprocess.run(  # resume: ranges of any size now (the kills needed small ones)
            [sys.executable, "-m", "keeper.cli", "index", "--until-head"],
            env={**env, "KEEPER_INDEXER__MAX_RANGE": "100000"},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
    progress = [c for c in seen if c is not None]
    # killed mid-backfill at least KILLS times, the checkpoint moving between kills
    assert kills >= KILLS and progress[-1] < head and len(set(progress)) >= KILLS // 2, (seen, head)
    target = IndexTarget.from_deployment(dep)
    engine = make_engine(db)
    try:
        fresh = fresh_dump(url, target, db_kind, tmp_path)
        assert diff_dumps(dump_tables(engine, target.chain_id), fresh) == []
    finally:
        engine.dispose()


def test_sigterm_stops_cleanly(deployed: Any, new_db: Callable[[], str], tmp_path: Path) -> None:
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=4, seed=11, blocks=3)
    db = new_db()
    env = _env(deployed, db, url, tmp_path)
    p = _start(env, ["index"], tmp_path / "index.log")
    deadline = time.monotonic() + 30
    while _checkpoint(db) != w3.eth.block_number:
        assert time.monotonic() < deadline and p.poll() is None, (tmp_path / "index.log").read_text()
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0, (tmp_path / "index.log").read_text()
    assert "stopping" in (tmp_path / "index.log").read_text()


def test_pg_url_without_driver_is_accepted(new_db: Callable[[], str], db_kind: str) -> None:
    """postgresql:// and postgres:// URLs get the psycopg driver; sqlite URLs are used as they are."""
    db = new_db()
    engine = make_engine(db.replace("postgresql+psycopg://", "postgres://"))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        if db_kind == "sqlite":
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    finally:
        engine.dispose()


def test_a_decode_worker_killed_mid_backfill_falls_back_to_threads(
    deployed: Any, new_db: Callable[[], str], db_kind: str, tmp_path: Path, caplog: Any
) -> None:
    """The OOM killer (or an operator) kills a decode worker during a catch-up: the indexer warns, goes
    on decoding in its own process, and the index equals a fresh one."""
    import asyncio

    from keeper.chain.rpc import RpcClient
    from keeper.indexer.sync import Indexer, SyncOptions
    from keeper.indexer.testing import open_store

    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=12, seed=12, blocks=60)
    target = IndexTarget.from_deployment(dep)
    engine, store = open_store(new_db(), target)
    killed: list[int] = []

    async def main() -> int:
        opts = SyncOptions(reorg_window=store.window, initial_range=2, max_range=2, workers_from_blocks=1)
        with FaultProxy(url, delay=0.05) as proxy:  # slow enough that the kill lands mid-backfill
            async with RpcClient(proxy.url, timeout=30.0) as rpc:
                ix = Indexer(rpc, store, opts)
                run = asyncio.create_task(ix.run(until_head=True))
                for _ in range(600):
                    pool = ix._pool
                    procs = dict(getattr(pool, "_processes", None) or {})
                    if procs and (ix.cp is not None and ix.cp.number > 5):
                        pid = next(iter(procs))
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                        break
                    await asyncio.sleep(0.02)
                cp = await run
                assert ix._pool is None, "the broken pool must be shut down"
                return cp.number

    try:
        with caplog.at_level("WARNING", logger="keeper.indexer.sync"):
            number = asyncio.run(main())
        assert killed, "no decode worker was running mid-backfill: the test proves nothing"
        assert number == w3.eth.block_number
        assert "decode workers failed" in caplog.text
        fresh = fresh_dump(url, target, db_kind, tmp_path / "fresh", decode_workers=0)
        assert diff_dumps(dump_tables(engine, target.chain_id), fresh) == []
    finally:
        engine.dispose()
