"""The indexer against a real anvil, on SQLite and on PostgreSQL: backfill equals the contracts' views,
incremental equals fresh, the CLI (index --until-head, status, db), live tail, wrong chain, two writers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from keeper.chain.rpc import RpcClient
from keeper.devchain.simulate import simulate, trader_address
from keeper.errors import KeeperError
from keeper.indexer import sync
from keeper.indexer.derive import Deriver
from keeper.indexer.spool import Spool, Spooled
from keeper.indexer.sync import Indexer, SyncOptions
from keeper.indexer.target import IndexTarget
from keeper.indexer.testing import Driver, compare_with_views, fresh_dump, index_to_head, open_store
from keeper.indexer.writer import ConcurrentWriter
from keeper.store.dump import diff_dumps, dump_tables
from keeper.store.engine import make_engine
from keeper.store.models import BadDebtRow, FundFlowRow, FundingSettlementRow, LiquidationRow
from keeper.store.testdb import throwaway_database

sys.path.insert(0, str(Path(__file__).resolve().parent))
from publisher_support import size_for  # noqa: E402
from publisher_support import stage_liquidations as stage_with  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SEED = 3
N_TRADERS = 16


def _sim_traders() -> list[str]:
    return [trader_address(SEED, i) for i in range(N_TRADERS)]


def stage_liquidations(d: Driver) -> None:
    """The publisher tests' staging, with the simulated market's traders in the sweep too."""
    stage_with(d, also=_sim_traders(), min_full=3)


def test_backfill_equals_contract_views(
    deployed: Any, new_db: Callable[[], str], tmp_path: Path, db_kind: str
) -> None:
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=N_TRADERS, seed=SEED, blocks=12)
    target = IndexTarget.from_deployment(dep)
    engine, store = open_store(new_db(), target)
    try:
        # several ranges through the pipeline, parsed and decoded by the decode worker processes
        first = index_to_head(url, store, initial_range=7, workers_from_blocks=1)
        assert first.stats.ranges > 1
        errors = compare_with_views(engine, w3, dep, target.chain_id, first.checkpoint.number, _sim_traders())
        assert not errors, "\n".join(errors[:20])

        d = Driver(w3, dep)
        stage_liquidations(d)
        d.admin_actions()
        d.settle_funding()
        d.send(d.trade_tx(d.traders[3], 1, size_for(d, 1, 1_000), 2))  # t3 reduces its short
        second = index_to_head(url, store)
        block = second.checkpoint.number
        assert block == w3.eth.block_number
        errors = compare_with_views(engine, w3, dep, target.chain_id, block, [*_sim_traders(), *d.traders])
        assert not errors, "\n".join(errors[:20])

        with engine.connect() as conn:
            liq = conn.execute(select(LiquidationRow.full, func.count()).group_by(LiquidationRow.full)).all()
            kinds = dict(liq)
            assert kinds.get(False, 0) >= 1 and kinds.get(True, 0) >= 1, kinds  # partial and full
            assert conn.execute(select(func.count()).select_from(BadDebtRow)).scalar() >= 1
            payouts = conn.execute(select(func.count()).where(FundFlowRow.direction == "payout")).scalar()
            assert payouts >= 1
            assert conn.execute(select(func.count()).select_from(FundingSettlementRow)).scalar() == len(
                dep.markets
            )

        # an index built in two runs equals a fresh one, table by table
        fresh = fresh_dump(url, target, db_kind, tmp_path, initial_range=100_000)
        assert diff_dumps(dump_tables(engine, target.chain_id), fresh) == []
    finally:
        engine.dispose()


def test_tiny_ranges_equal_one_big_range(
    deployed: Any, new_db: Callable[[], str], tmp_path: Path, db_kind: str
) -> None:
    """Ranges of 1-2 blocks (every range boundary, header window and pipeline hand-off) change nothing."""
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "crash", traders=8, seed=SEED, blocks=6)
    target = IndexTarget.from_deployment(dep)
    engine, store = open_store(new_db(), target, window=4)
    try:
        run = index_to_head(url, store, initial_range=1, max_range=2, pipeline_depth=2)
        assert run.stats.ranges >= (run.checkpoint.number - target.start_block) // 2
        fresh = fresh_dump(url, target, db_kind, tmp_path, window=4, initial_range=100_000)
        assert diff_dumps(dump_tables(engine, target.chain_id), fresh) == []
        assert len(store.window_blocks()) == 5  # the window: checkpoint and the 4 blocks below it
    finally:
        engine.dispose()


def test_a_fresh_index_asks_the_database_for_no_row_and_a_resumed_one_does(
    deployed: Any, new_db: Callable[[], str], tmp_path: Path, db_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an empty table every row the writer folds onto is in its cache, or new: it loads none (one
    query per account or position met for the first time, otherwise). A resumed index (rows stored by an
    earlier run, not cached) loads them as before, and both equal a fresh index."""
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    target = IndexTarget.from_deployment(dep)
    loads: list[tuple[str, int]] = []
    real_load = Deriver._load

    def load(self: Deriver, conn: Any, chain_id: int, ts: Any, keys: list[Any]) -> Any:
        loads.append((ts.table.name, len(keys)))
        return real_load(self, conn, chain_id, ts, keys)

    monkeypatch.setattr(Deriver, "_load", load)
    simulate(w3, dep, "calm", traders=N_TRADERS, seed=SEED + 2, blocks=4)
    db = new_db()
    engine, store = open_store(db, target)
    try:
        index_to_head(url, store, initial_range=2, decode_workers=0)
        assert loads == []
        simulate(w3, dep, "calm", traders=N_TRADERS, seed=SEED + 2, blocks=3)
        again, resumed = open_store(db, target)  # a new run: nothing cached
        try:
            index_to_head(url, resumed, initial_range=2, decode_workers=0)
        finally:
            again.dispose()
        assert {name for name, _ in loads} >= {"accounts", "positions"}
        fresh = fresh_dump(url, target, db_kind, tmp_path, decode_workers=0)
        assert diff_dumps(dump_tables(engine, target.chain_id), fresh) == []
    finally:
        engine.dispose()


def _keeper(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keeper.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_index_status_db(deployed: Any, new_db: Callable[[], str], tmp_path: Path) -> None:
    w3, dep = deployed.w3, deployed.deployment
    simulate(w3, dep, "calm", traders=6, seed=SEED, blocks=4)
    db_url = new_db()
    env = {
        **os.environ,
        "KEEPER_CONFIG": str(tmp_path / "none.toml"),  # defaults + environment only
        "KEEPER_DATABASE__URL": db_url,
        "KEEPER_CHAIN__RPC_URLS": orjson.dumps([deployed.anvil.url]).decode(),
        "KEEPER_CHAIN__DEPLOYMENTS_FILE": str(deployed.path),
        "KEEPER_CHAIN__CHAIN_ID": "31337",
    }
    r = _keeper(["db", "current"], env)
    assert r.returncode == 0 and r.stdout.startswith("none"), r.stderr
    r = _keeper(["db", "upgrade"], env)
    assert r.returncode == 0, r.stderr
    assert "upgraded from empty to" in r.stdout
    r = _keeper(["index", "--until-head"], env)
    assert r.returncode == 0, r.stderr
    assert "indexed" in r.stderr  # plain progress/log lines when stderr is not a TTY
    r = _keeper(["status", "--json"], env)
    assert r.returncode == 0, r.stderr
    st = orjson.loads(r.stdout)
    head = w3.eth.block_number
    assert st["head"] == head and st["checkpoint"]["block"] == head and st["lag"] == 0
    assert st["events"]["PositionChanged"] > 0 and st["events_total"] == sum(st["events"].values())
    r = _keeper(["status"], env)
    assert r.returncode == 0 and "checkpoint" in r.stdout and "lag          0 blocks" in r.stdout, r.stdout

    bad = {**env, "KEEPER_CHAIN__CHAIN_ID": "1"}
    r = _keeper(["index", "--until-head"], bad)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "chain" in r.stderr


def test_wrong_chain_is_not_indexed(deployed: Any, new_db: Callable[[], str]) -> None:
    dep = deployed.deployment
    target = IndexTarget(
        chain_id=1, start_block=dep.deployment_block, contracts=IndexTarget.from_deployment(dep).contracts
    )
    engine, store = open_store(new_db(), target)
    try:
        with pytest.raises(KeeperError, match="wrong chain"):
            index_to_head(deployed.anvil.url, store)
        assert store.checkpoint() is None
    finally:
        engine.dispose()


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    code = "import os; print(os.getpid())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)


def test_decode_workers_write_what_the_keeper_process_writes(
    deployed: Any, tmp_path: Path, db_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backfill's worker processes (parse, decode, fold) and the live tail's in-process path give
    the same tables, row for row, whether the answers and rows go through the pool's pipes or through
    spool files (which are all gone afterwards)."""
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=N_TRADERS, seed=SEED + 1, blocks=6)
    target = IndexTarget.from_deployment(dep)
    options: dict[str, Any] = {"initial_range": 5, "workers_from_blocks": 1}
    workers = fresh_dump(url, target, db_kind, tmp_path / "w", spool_dir=None, **options)
    # a spool left by a keeper killed during a backfill goes as the next one starts, even one that
    # needs no spool itself
    shm = tmp_path / "shm"
    stale = shm / f"zanbara-keeper-spool-{_dead_pid()}"
    stale.mkdir(parents=True)
    (stale / "k0").write_bytes(b"an answer nobody will read")
    threads = fresh_dump(url, target, db_kind, tmp_path / "t", initial_range=5, decode_workers=0,
                         spool_dir=str(shm))  # fmt: skip
    assert not stale.exists()
    assert len(workers["events"]) > 100 and len(workers["position_changes"]) > 10
    assert diff_dumps(workers, threads) == []
    monkeypatch.setattr(sync, "POOL_WAIT_BYTES", 0)  # every answer waits for the workers to be up
    with throwaway_database(db_kind, tmp_path / "sp") as db_url:
        engine, store = open_store(db_url, target)
        try:
            run = index_to_head(url, store, spool_dir=str(shm), spool_min_bytes=0, **options)
            assert diff_dumps(dump_tables(engine, target.chain_id), threads) == []
        finally:
            engine.dispose()
    # (ranges without logs have no rows, and PostgreSQL takes rows, not packed buffers)
    assert run.stats.spooled_answers == run.stats.ranges
    if db_kind == "sqlite":
        assert 0 < run.stats.spooled_rows <= run.stats.spooled_answers
    else:
        assert run.stats.spooled_rows == 0
    assert list(shm.iterdir()) == []
    if db_kind == "sqlite":  # the workers packed their rows; staged databases (the fallback) write the same
        with throwaway_database(db_kind, tmp_path / "s") as db_url:
            engine, store = open_store(db_url, target)
            try:
                assert store.rows_as == "packed"
                store.rows_as = "staged"
                index_to_head(url, store, initial_range=5, workers_from_blocks=1)
                assert diff_dumps(dump_tables(engine, target.chain_id), threads) == []
            finally:
                engine.dispose()


def test_an_answer_a_worker_cannot_read_from_the_spool_goes_by_pipe(
    deployed: Any,
    tmp_path: Path,
    db_kind: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A spool file the worker cannot map (removed behind the keeper's back, say) costs a warning and a
    second sending of the answer, not the range: the index equals one made in the keeper's process."""
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=N_TRADERS, seed=SEED + 3, blocks=4)
    target = IndexTarget.from_deployment(dep)
    gone: list[str] = []
    real_put = Spool.put

    def put(self: Spool, data: Any) -> Spooled | None:
        ref = real_put(self, data)
        if ref is not None:
            os.unlink(ref.path)
            gone.append(ref.path)
        return ref

    monkeypatch.setattr(Spool, "put", put)
    monkeypatch.setattr(sync, "POOL_WAIT_BYTES", 0)  # every answer waits for the workers to be up
    shm = tmp_path / "shm"
    shm.mkdir()
    options: dict[str, Any] = {"initial_range": 5, "workers_from_blocks": 1, "spool_min_bytes": 0}
    with caplog.at_level("WARNING", logger="keeper.indexer"):
        spooled = fresh_dump(url, target, db_kind, tmp_path / "w", spool_dir=str(shm), **options)
    threads = fresh_dump(url, target, db_kind, tmp_path / "t", initial_range=5, decode_workers=0)
    assert gone and diff_dumps(spooled, threads) == []
    assert "answer sent again by pipe" in caplog.text


def _record_fetches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (from, to) of every eth_getLogs the indexer sends from now on, in order."""
    fetched: list[tuple[int, int]] = []
    real_get_logs = sync.get_logs_raw

    async def get_logs(rpc: Any, frm: int, to: int, addresses: Any) -> Any:
        fetched.append((frm, to))
        return await real_get_logs(rpc, frm, to, addresses)

    monkeypatch.setattr(sync, "get_logs_raw", get_logs)
    return fetched


def test_an_oversized_answer_is_cut_into_pieces_that_index_as_small_ranges_do(
    deployed: Any, tmp_path: Path, db_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A range whose answer holds far more logs than the target is cut at block boundaries and its
    pieces decoded apart (in the worker processes and in the keeper's process alike): no block is
    asked of the node twice, and the index equals one fetched a block at a time."""
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=N_TRADERS, seed=SEED + 2, blocks=8)
    target = IndexTarget.from_deployment(dep)
    cut_into: list[int] = []
    real_split = sync.split_by_block

    def split(raw: bytes, frm: int, to: int, logs: int, goal: int) -> Any:
        pieces = real_split(raw, frm, to, logs, goal)
        cut_into.append(0 if pieces is None else len(pieces))
        return pieces

    monkeypatch.setattr(sync, "split_by_block", split)
    fetched = _record_fetches(monkeypatch)
    dense = {"first_range": 64, "target_logs": 15}  # the first answer: far more than 3 x 15 logs
    for name, options in [("workers", {"workers_from_blocks": 1}), ("threads", {"decode_workers": 0})]:
        cut_into.clear()
        fetched.clear()
        got = fresh_dump(url, target, db_kind, tmp_path / name, **dense, **options)
        assert max(cut_into, default=0) >= 3, (name, cut_into)
        blocks = [b for frm, to in fetched for b in range(frm, to + 1)]
        assert len(blocks) == len(set(blocks)), f"{name}: blocks fetched twice: {sorted(fetched)}"
        if name == "workers":
            first = got
        else:
            assert diff_dumps(got, first) == []
    monkeypatch.undo()
    one_by_one = fresh_dump(url, target, db_kind, tmp_path / "small", initial_range=1, max_range=1)
    assert len(first["events"]) > 100
    assert diff_dumps(first, one_by_one) == []


def test_the_pieces_before_a_bad_one_are_indexed_and_the_rest_fetched_again(
    deployed: Any, tmp_path: Path, db_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each piece of a cut answer goes to the writer as soon as it is decoded. A piece that turns out
    bad (here: a log marked removed, as when the chain changes under the query) stops the catch-up after
    the pieces before it, which stay indexed; the next catch-up fetches again from the bad piece's
    first block, and the index equals one fetched a block at a time."""
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=N_TRADERS, seed=SEED + 3, blocks=8)
    target = IndexTarget.from_deployment(dep)
    spoiled: list[int] = []  # the first block of the piece spoiled (once)
    real_split = sync.split_by_block

    def split(raw: bytes, frm: int, to: int, logs: int, goal: int) -> Any:
        pieces = real_split(raw, frm, to, logs, goal)
        if pieces and len(pieces) >= 3 and not spoiled:
            a, b, body = pieces[-2]
            assert b'"removed":false' in body
            pieces[-2] = (a, b, body.replace(b'"removed":false', b'"removed":true', 1))
            spoiled.append(a)
        return pieces

    monkeypatch.setattr(sync, "split_by_block", split)
    fetched = _record_fetches(monkeypatch)
    got = fresh_dump(url, target, db_kind, tmp_path / "cut", first_range=64, target_logs=15, decode_workers=0)
    monkeypatch.undo()
    assert spoiled, "no answer was cut into 3 pieces or more"
    cut = next(i for i, (frm, to) in enumerate(fetched) if frm <= spoiled[0] <= to)
    # fetched again from the spoiled piece on, not before it: the pieces before it were indexed
    later = fetched[cut + 1 :]
    assert later and min(frm for frm, _ in later) == spoiled[0], fetched
    one_by_one = fresh_dump(url, target, db_kind, tmp_path / "small", initial_range=1, max_range=1)
    assert diff_dumps(got, one_by_one) == []


def test_two_writers_cannot_double_index(deployed: Any, new_db: Callable[[], str]) -> None:
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    target = IndexTarget.from_deployment(dep)
    db = new_db()
    engine, store = open_store(db, target)
    engine2, store2 = open_store(db, target)
    try:
        index_to_head(url, store)
        stale = store2.checkpoint()
        assert stale is not None
        simulate(w3, dep, "calm", traders=4, seed=SEED, blocks=2)
        index_to_head(url, store)

        async def fetch() -> Any:
            async with RpcClient(url) as rpc:
                ix = Indexer(rpc, store2, SyncOptions())
                return await ix._fetch_range(stale.number + 1, stale.number + 1, w3.eth.block_number)

        fr = asyncio.run(fetch())
        with pytest.raises(ConcurrentWriter):
            store2.commit_range(fr, stale)
    finally:
        engine.dispose()
        engine2.dispose()


def test_live_tail_woken_by_new_heads(deployed: Any, new_db: Callable[[], str]) -> None:
    """Continuous mode: a WebSocket newHeads subscription wakes the poller (poll interval set to 30 s)."""
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    target = IndexTarget.from_deployment(dep)
    engine, store = open_store(new_db(), target)
    d = Driver(w3, dep)

    async def main() -> float:
        stop = asyncio.Event()
        async with RpcClient(url) as rpc:
            ix = Indexer(rpc, store, SyncOptions(poll_interval=30.0), ws_url=url.replace("http://", "ws://"))
            task = asyncio.create_task(ix.run(stop=stop))
            try:
                while ix.cp is None or ix.cp.number < w3.eth.block_number:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # the subscription is up
                await asyncio.to_thread(d.send, d.refresh_tx(0))
                head = w3.eth.block_number
                t0 = time.monotonic()
                while ix.cp.number < head:
                    assert time.monotonic() - t0 < 10, "not woken by newHeads"
                    await asyncio.sleep(0.02)
                return time.monotonic() - t0
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)

    try:
        latency = asyncio.run(main())
        assert latency < 5.0
        assert store.event_counts().get("PriceRefreshed", 0) >= 1
    finally:
        engine.dispose()


def test_failure_inside_a_commit_leaves_nothing_behind(
    deployed: Any, new_db: Callable[[], str], tmp_path: Path, db_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the raw events and the derived state (or anywhere in a range) rolls the range back."""
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    target = IndexTarget.from_deployment(dep)
    engine, store = open_store(new_db(), target)
    try:
        index_to_head(url, store)
        simulate(w3, dep, "calm", traders=6, seed=SEED, blocks=3)
        before = dump_tables(engine, target.chain_id)

        def boom(*_a: Any, **_k: Any) -> None:
            raise RuntimeError("killed mid-transaction")

        monkeypatch.setattr(store.deriver, "apply_folded", boom)
        with pytest.raises(RuntimeError, match="killed mid-transaction"):
            index_to_head(url, store)
        assert dump_tables(engine, target.chain_id) == before  # no event, block or checkpoint moved
        monkeypatch.undo()
        index_to_head(url, store)
        fresh = fresh_dump(url, target, db_kind, tmp_path)
        assert diff_dumps(dump_tables(engine, target.chain_id), fresh) == []
    finally:
        engine.dispose()


def test_keeper_index_forks_its_decode_workers_and_indexes_what_the_keeper_process_does(
    deployed: Any, new_db: Callable[[], str], tmp_path: Path, db_kind: str
) -> None:
    """``keeper index`` starts single-threaded, so it forks its decode workers before anything else
    (they start in milliseconds, the decoder already built): the index equals the in-process one."""
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=N_TRADERS, seed=SEED + 2, blocks=6)
    db_url = new_db()
    env = {
        **os.environ,
        "KEEPER_CONFIG": str(tmp_path / "none.toml"),
        "KEEPER_DATABASE__URL": db_url,
        "KEEPER_CHAIN__RPC_URLS": orjson.dumps([url]).decode(),
        "KEEPER_CHAIN__DEPLOYMENTS_FILE": str(deployed.path),
        "KEEPER_INDEXER__INITIAL_RANGE": "5",
        "KEEPER_INDEXER__WORKERS_FROM_BLOCKS": "1",
    }
    assert _keeper(["db", "upgrade"], env).returncode == 0
    r = _keeper(["index", "--until-head"], env)
    assert r.returncode == 0, r.stderr
    assert "decode workers: 2, forked at start-up" in r.stderr, r.stderr
    target = IndexTarget.from_deployment(dep)
    engine = make_engine(db_url)
    try:
        indexed = dump_tables(engine, target.chain_id)
    finally:
        engine.dispose()
    threads = fresh_dump(url, target, db_kind, tmp_path / "t", initial_range=5, decode_workers=0)
    assert len(indexed["events"]) > 100
    assert diff_dumps(indexed, threads) == []


def test_decode_workers_are_not_forked_from_a_process_with_threads() -> None:
    """A lock another thread holds at the fork would stay held in the child forever: with a second
    thread alive, no workers are forked (the indexer starts them through the forkserver instead)."""
    import threading

    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    try:
        assert sync.fork_decode_workers(2) is None
    finally:
        release.set()
        other.join()
    assert sync.fork_decode_workers(0) is None


def test_a_single_threaded_process_forks_its_decode_workers_with_their_inheritance_frozen() -> None:
    """In a fresh single-threaded process: both workers are its own children (forked, not through a
    fork server), at the niceness asked for above its own, and what they inherited is out of their
    cycle collector's reach (never finalized there), while the parent's own collector is as it was."""
    code = (
        "import gc, os\n"
        "from keeper.indexer.sync import fork_decode_workers\n"
        "pool = fork_decode_workers(2, 7)\n"
        "assert pool is not None\n"
        "parents = {pool.submit(os.getppid).result() for _ in range(8)}\n"
        "nice = {pool.submit(os.nice, 0).result() for _ in range(8)}\n"
        "print(pool.submit(gc.get_freeze_count).result(), gc.get_freeze_count(),\n"
        "      parents == {os.getpid()}, len(pool._processes), nice == {os.nice(0) + 7})\n"
        "pool.shutdown()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    child_frozen, parent_frozen, own_children, workers, niceness = r.stdout.split()
    assert int(child_frozen) > 10_000 and int(parent_frozen) == 0
    assert own_children == "True" and workers == "2" and niceness == "True"


def test_decode_workers_through_the_forkserver_run_at_the_configured_niceness() -> None:
    """The workers a later catch-up starts (through the forkserver) are niced as the forked ones are:
    on a short CPU the keeper's own process (writer, risk, liquidations) runs first."""
    from types import SimpleNamespace

    owner = SimpleNamespace(opts=SyncOptions(decode_workers=1, decode_niceness=5))  # all _new_pool reads
    pool = sync.Indexer._new_pool(owner)  # type: ignore[arg-type]
    try:
        assert pool.submit(os.nice, 0).result(timeout=60) == os.nice(0) + 5
    finally:
        pool.shutdown()
