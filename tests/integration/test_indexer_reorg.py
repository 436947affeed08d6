"""Reorgs against a real anvil (``anvil_reorg`` / ``anvil_rollback``), on SQLite and on PostgreSQL.

After each scenario the database must equal a fresh index of the final chain, table by table (raw
events, blocks window, checkpoint, histories and current state), and the contracts' views.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keeper.devchain.anvil import rpc_call
from keeper.errors import KeeperError
from keeper.indexer.target import IndexTarget
from keeper.indexer.testing import (
    Driver,
    LiveIndexer,
    compare_with_views,
    fresh_dump,
    index_to_head,
    open_store,
)
from keeper.indexer.writer import IndexStore
from keeper.store.dump import diff_dumps, dump_tables
from keeper.store.testdb import DatabaseUnavailable, throwaway_database

pytestmark = pytest.mark.integration

WINDOW = 64
HISTORY_BLOCKS = 40


@dataclass
class Env:
    w3: Any
    dep: Any
    url: str
    d: Driver
    target: IndexTarget
    kind: str
    tmp: Path
    rng: random.Random
    new_db: Callable[[], str]

    def rpc(self, method: str, params: list[Any]) -> Any:
        return rpc_call(self.url, method, params, timeout=60)

    def store(self, window: int = WINDOW) -> tuple[Any, IndexStore]:
        return open_store(self.new_db(), self.target, window)

    def tx(self) -> dict[str, Any]:
        """A random transaction with events: a small trade (open, add, reduce, flip) or an oracle refresh."""
        d, rng = self.d, self.rng
        if rng.random() < 0.25:
            return d.refresh_tx(rng.randrange(len(d.markets)))
        size = rng.choice([-1, 1]) * rng.randint(1, 50) * 10**14
        return d.trade_tx(rng.choice(d.traders), rng.randrange(len(d.markets)), size, 2)

    def history(self, n: int) -> None:
        for _ in range(n):
            self.d.send(self.tx(), must_succeed=False)

    def reorg(self, depth: int, n_txs: int | None = None) -> None:
        """Replaces the last ``depth`` blocks with as many blocks holding new, different transactions."""
        n = depth if n_txs is None else n_txs
        self.rpc("anvil_reorg", [depth, [[self.tx(), self.rng.randrange(depth)] for _ in range(n)]])

    def block_txs(self, number: int) -> list[str]:
        return ["0x" + bytes(h).hex() for h in self.w3.eth.get_block(number)["transactions"]]

    def assert_equals_fresh(self, engine: Any, window: int = WINDOW, **options: Any) -> None:
        fresh = fresh_dump(self.url, self.target, self.kind, self.tmp, window, **options)
        mine = dump_tables(engine, self.target.chain_id)
        assert diff_dumps(mine, fresh) == []
        cp = [r for r in mine["checkpoints"]][0]
        errors = compare_with_views(engine, self.w3, self.dep, self.target.chain_id, cp[3], self.d.traders)
        assert not errors, "\n".join(errors[:20])


@pytest.fixture
def env(deployed: Any, db_kind: str, tmp_path: Path) -> Iterator[Env]:
    with ExitStack() as stack:

        def new_db() -> str:
            try:
                return stack.enter_context(throwaway_database(db_kind, tmp_path))
            except DatabaseUnavailable as exc:
                pytest.fail(str(exc))

        d = Driver(deployed.w3, deployed.deployment)
        d.fund_traders()
        e = Env(
            deployed.w3, deployed.deployment, deployed.anvil.url, d,
            IndexTarget.from_deployment(deployed.deployment), db_kind, tmp_path, random.Random(7), new_db,
        )  # fmt: skip
        e.history(HISTORY_BLOCKS)
        yield e


@pytest.mark.parametrize("depth", [1, 5, 30])
def test_reorg_depth(env: Env, depth: int) -> None:
    engine, store = env.store()
    try:
        with LiveIndexer(env.url, store) as live:
            live.sync()
            before = live.indexer.cp
            env.reorg(depth)
            live.sync()
            assert live.indexer.stats.reorgs == 1
            assert live.indexer.stats.last_reorg_depth == depth
            assert live.indexer.cp.number == before.number and live.indexer.cp.hash != before.hash
            env.assert_equals_fresh(engine)
            env.history(3)  # and it goes on from the new chain
            live.sync()
            env.assert_equals_fresh(engine)
    finally:
        engine.dispose()


def test_rollback_then_new_transactions(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    engine, store = env.store()
    try:
        with LiveIndexer(env.url, store) as live:
            live.sync()
            head = env.w3.eth.block_number
            env.rpc("anvil_rollback", [5])
            env.history(2)  # a shorter chain: the head went backwards by 3
            with caplog.at_level(logging.WARNING, logger="keeper.indexer"):
                live.sync()
            assert "went backwards" in caplog.text
            assert live.indexer.cp.number == head - 3 == env.w3.eth.block_number
            assert live.indexer.stats.reorgs == 1
            env.assert_equals_fresh(engine)
    finally:
        engine.dispose()


def test_head_behind_checkpoint_is_waited_for(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A node that answers a lower head on the same chain: reported, nothing indexed or rolled back."""
    engine, store = env.store()
    try:
        with LiveIndexer(env.url, store) as live:
            live.sync()
            before = dump_tables(engine)
            env.rpc("anvil_rollback", [3])  # same chain, 3 blocks shorter, no new block yet
            with caplog.at_level(logging.WARNING, logger="keeper.indexer"):
                live.sync()
            assert "below the checkpoint" in caplog.text
            assert dump_tables(engine) == before
            env.history(6)  # new, different blocks on top: now a reorg of depth 3
            live.sync()
            assert live.indexer.stats.reorgs == 1
            env.assert_equals_fresh(engine)
    finally:
        engine.dispose()


def test_event_removed(env: Env) -> None:
    """The same blocks again, but one transaction (and its events) left out."""
    engine, store = env.store()
    try:
        with LiveIndexer(env.url, store) as live:
            live.sync()
            head = env.w3.eth.block_number
            raw = [
                (env.d.raw_tx(h), off)
                for off, n in enumerate(range(head - 2, head + 1))
                for h in env.block_txs(n)
            ]
            dropped = raw.pop()  # the last block's transaction
            env.rpc("anvil_reorg", [3, [[r, off] for r, off in raw]])
            assert env.block_txs(head) == []
            live.sync()
            env.assert_equals_fresh(engine)
            tx_hash = env.w3.keccak(hexstr=dropped[0]).hex()
            with engine.connect() as conn:
                from sqlalchemy import func, select

                from keeper.store.models import Event

                gone = conn.execute(
                    select(func.count()).where(Event.tx_hash == "0x" + tx_hash.removeprefix("0x"))
                ).scalar()
            assert gone == 0
    finally:
        engine.dispose()


def test_event_moved_to_another_block(env: Env) -> None:
    """The same transactions, but the first of the last three blocks' moves one block later."""
    engine, store = env.store()
    try:
        with LiveIndexer(env.url, store) as live:
            live.sync()
            head = env.w3.eth.block_number
            moved = env.block_txs(head - 2)
            assert moved
            raw = [[env.d.raw_tx(h), 1] for h in moved]
            raw += [[env.d.raw_tx(h), 1] for h in env.block_txs(head - 1)]
            raw += [[env.d.raw_tx(h), 2] for h in env.block_txs(head)]
            env.rpc("anvil_reorg", [3, raw])
            assert env.block_txs(head - 1)[: len(moved)] == moved
            live.sync()
            env.assert_equals_fresh(engine)
            with engine.connect() as conn:
                from sqlalchemy import select

                from keeper.store.models import Event

                blocks = set(
                    conn.execute(select(Event.block_number).where(Event.tx_hash.in_(moved))).scalars()
                )
            assert blocks == {head - 1}
    finally:
        engine.dispose()


def test_reorg_while_the_indexer_is_stopped(env: Env) -> None:
    """Caught at start-up by the window check: a reorg that happened while the keeper was down."""
    engine, store = env.store()
    try:
        first = index_to_head(env.url, store)
        env.reorg(5)
        env.history(2)
        again = index_to_head(env.url, store)  # a new indexer: the start-up path
        assert again.stats.reorgs == 1 and again.stats.last_reorg_depth == 5
        assert again.checkpoint.number == first.checkpoint.number + 2
        env.assert_equals_fresh(engine)
    finally:
        engine.dispose()


def test_three_reorgs_in_a_row(env: Env) -> None:
    engine, store = env.store()
    try:
        with LiveIndexer(env.url, store) as live:
            live.sync()
            for depth in (2, 7, 4):  # indexed between each
                env.reorg(depth)
                live.sync()
            assert live.indexer.stats.reorgs == 3
            env.assert_equals_fresh(engine)
            for depth in (3, 6, 2):  # stacked: three reorgs before the indexer looks
                env.reorg(depth)
            env.history(1)
            live.sync()
            assert live.indexer.stats.reorgs == 4
            env.assert_equals_fresh(engine)
    finally:
        engine.dispose()


def test_reorg_found_by_parent_hash_during_catch_up(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain changes between the tip check and the fetch: the new range does not link to the checkpoint"""
    engine, store = env.store()
    try:
        with LiveIndexer(env.url, store) as live:
            live.sync()
            env.reorg(4)
            env.history(3)
            ix = live.indexer
            real = ix._check_tip
            calls = {"n": 0}

            async def blind_once(head: int) -> bool:
                calls["n"] += 1
                return True if calls["n"] == 1 else await real(head)

            monkeypatch.setattr(ix, "_check_tip", blind_once)
            live.sync()
            assert calls["n"] >= 2 and ix.stats.reorgs == 1
            env.assert_equals_fresh(engine)
    finally:
        engine.dispose()


def test_reorg_deeper_than_the_window_stops(env: Env) -> None:
    engine, store = env.store(window=5)
    try:
        with LiveIndexer(env.url, store) as live:
            live.sync()
            before = dump_tables(engine)
            env.reorg(8)
            with pytest.raises(KeeperError, match="reorg deeper than the window"):
                live.sync()
            assert dump_tables(engine) == before  # nothing half-done
        with pytest.raises(KeeperError, match="reorg deeper than the window"):
            index_to_head(env.url, store)  # and at start-up too
    finally:
        engine.dispose()


def test_confirmations_keep_shallow_reorgs_out(env: Env) -> None:
    engine, store = env.store()
    try:
        with LiveIndexer(env.url, store, confirmations=3) as live:
            cp, safe = live.sync()
            assert cp == safe == env.w3.eth.block_number - 3
            env.reorg(3)  # only unconfirmed blocks change
            live.sync()
            assert live.indexer.stats.reorgs == 0
            env.reorg(5)  # two indexed blocks change
            live.sync()
            assert live.indexer.stats.reorgs == 1
            env.assert_equals_fresh(engine, confirmations=3)
    finally:
        engine.dispose()


def test_head_far_below_the_window_is_waited_for(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A node more than the window behind (resyncing?): nothing to compare, so nothing is destroyed."""
    engine, store = env.store(window=5)
    try:
        with LiveIndexer(env.url, store) as live:
            live.sync()
            before = dump_tables(engine)
            env.rpc("anvil_rollback", [8])
            with caplog.at_level(logging.WARNING, logger="keeper.indexer"):
                live.sync()
            assert "more than the reorg window below" in caplog.text
            assert dump_tables(engine) == before
    finally:
        engine.dispose()
