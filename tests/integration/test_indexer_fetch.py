"""Fetching: the providers' range errors, the adaptive range, and a fault-injecting JSON-RPC proxy in front
of anvil (range limits in every provider's style, timeouts, truncated and malformed answers, HTTP 503):
the index built through it equals a fresh index built directly, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keeper.chain.logs import RangeTooLarge, classify_range_error
from keeper.chain.rpc import RpcClient, RpcError, RpcTransportError
from keeper.devchain.simulate import simulate
from keeper.indexer.fetch import AdaptiveRange
from keeper.indexer.target import IndexTarget
from keeper.indexer.testing import FaultProxy, fresh_dump, open_store
from keeper.store.dump import diff_dumps, dump_tables

# ------------------------------------------------------------------------------------ classification

RANGE_ERRORS: list[tuple[RpcError | RpcTransportError, tuple[int, int] | None, int | None]] = [
    (
        RpcError(
            -32602,
            "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range "
            "and no limit on the response size, or you can request any block range with a cap of 10K logs in "
            "the response. Based on your parameters, this block range should work: [0x1, 0x2]",
        ),
        (1, 2),
        None,
    ),
    (
        RpcError(
            -32005, "query returned more than 10000 results", {"from": "0x10", "to": "0x20", "limit": 10000}
        ),
        (16, 32),
        None,
    ),
    (
        RpcError(-32005, "query returned more than 10000 results. Try with this block range [0x64, 0xc8]."),
        (100, 200),
        None,
    ),
    (RpcError(-32000, "exceed maximum block range: 5000"), None, 5000),
    (RpcError(-32600, "eth_getLogs is limited to a 10,000 range"), None, 10000),
    (RpcError(-32000, "block range is too wide"), None, None),
    (RpcError(-32000, "Block range is too large"), None, None),
    (RpcError(-32000, "response size exceeds 150 MB limit"), None, None),
    (RpcError(-32005, "limit exceeded"), None, None),
    (RpcError(-32000, "Query timeout exceeded. Consider reducing your block range"), None, None),
    (RpcError(-32005, "something new"), None, None),  # the code alone says "limit exceeded"
    (RpcError(-32000, "ranges over 2000 blocks are not supported on freetier"), None, 2000),
    (RpcTransportError("timeout", timeout=True), None, None),
    (RpcTransportError("truncated", malformed=True), None, None),
    (RpcTransportError("HTTP 413", status=413), None, None),
]
NOT_RANGE_ERRORS = [
    RpcError(-32601, "the method eth_foo does not exist/is not available"),
    RpcError(3, "execution reverted"),
    RpcError(-32602, "invalid argument 0: hex string without 0x prefix"),
    RpcTransportError("connection refused"),
    RpcTransportError("HTTP 401", status=401),
]


@pytest.mark.parametrize(
    ("err", "suggested", "max_blocks"),
    RANGE_ERRORS,
    ids=lambda x: str(x)[:40] if isinstance(x, Exception) else None,
)
def test_range_errors_are_recognised(err: Any, suggested: Any, max_blocks: Any) -> None:
    got = classify_range_error(err)
    assert got is not None
    assert got.suggested == suggested
    assert got.max_blocks == max_blocks


@pytest.mark.parametrize("err", NOT_RANGE_ERRORS, ids=str)
def test_other_errors_are_not_range_errors(err: Any) -> None:
    assert classify_range_error(err) is None


def test_adaptive_range() -> None:
    r = AdaptiveRange(100, minimum=1, maximum=1_000, target_logs=50)
    r.success(100, 10)
    assert r.size == 200
    r.too_large(200, RangeTooLarge("x", suggested=(5, 34)), 5)
    assert r.size == 30
    r.too_large(30, RangeTooLarge("x", max_blocks=8), 5)
    assert r.size == 8 and r.cap == 8
    r.success(8, 0)
    assert r.size == 8  # the provider's stated limit is not exceeded again
    r.too_large(8, RangeTooLarge("x"), 5)
    assert r.size == 4
    r.success(4, 500)  # far more logs than the target: shrink (in proportion)
    assert r.size == 1
    r.size = 2
    for _ in range(20):
        r.too_large(r.size, RangeTooLarge("x"), 5)
    assert r.size == 1
    r = AdaptiveRange(1_000, maximum=10_000, target_logs=100)
    r.success(1_000, 50_000)  # a dense chain: straight to about target_logs per range
    assert r.size == 2


def test_a_span_wider_than_any_answered_is_fetched_in_parts() -> None:
    r = AdaptiveRange(16, maximum=1_000, target_logs=100)
    assert r.parts(3) == 1  # the first range is the probe: nothing is proven yet
    r.success(16, 10)
    assert (r.size, r.proven) == (32, 16)
    assert r.parts(3) == 2 and r.parts(1) == 1  # 32 blocks in two parts of the proven 16
    r.success(32, 20)  # both parts in, counted as one answer of their whole span
    assert (r.size, r.proven) == (64, 32) and r.parts(3) == 2
    r.success(16, 1_000)  # a dense stretch: the density changed, what was proven no longer holds
    assert r.size == 1 and r.proven == 1 and r.parts(3) == 1
    r.success(1, 50)
    assert (r.size, r.proven) == (2, 1) and r.parts(3) == 2
    r.size = 100
    assert r.parts(3) == 3  # never more parts than may start at once


def test_decode_turns_go_to_the_lowest_block_first() -> None:
    from keeper.indexer.sync import LowestFirst

    async def main() -> list[int]:
        turns, order = LowestFirst(1), []
        gate = asyncio.Event()

        async def job(key: int, hold: bool = False) -> None:
            async with turns.turn(key):
                order.append(key)
                if hold:
                    await gate.wait()

        first = asyncio.create_task(job(5, hold=True))
        await asyncio.sleep(0)
        later = [asyncio.create_task(job(k)) for k in (40, 30, 10, 20)]
        await asyncio.sleep(0)
        later[0].cancel()  # a waiter cancelled (its range no longer needed) gives up its place
        gate.set()
        await asyncio.gather(first, *later[1:])
        assert turns.free == 1 and not turns._waiting
        return order

    assert asyncio.run(main()) == [5, 10, 20, 30]


# ------------------------------------------------------------------------------------ fault proxy


@pytest.mark.integration
def test_index_through_a_faulty_provider_equals_a_direct_index(
    deployed: Any, new_db: Callable[[], str], db_kind: str, tmp_path: Path
) -> None:
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=8, seed=5, blocks=6)
    target = IndexTarget.from_deployment(dep)
    faults = [
        "alchemy",
        "timeout",
        "infura",
        "truncated",
        "quicknode",
        "malformed",
        "wide",
        "not-a-list",
        "413",
    ]
    schedule = [
        x for f in [*faults, "code", "truncated"] for x in ("ok", f)
    ]  # the range grows back in between
    engine, store = open_store(new_db(), target, window=16)
    try:
        with FaultProxy(url, max_span=7, schedule=schedule, fail_every=5, strip_timestamps=True) as proxy:

            async def main() -> Any:
                from keeper.indexer.sync import Indexer, SyncOptions

                async with RpcClient(proxy.url, timeout=1.0, retries=8, backoff=0.01) as rpc:
                    ix = Indexer(
                        rpc,
                        store,
                        SyncOptions(reorg_window=16, initial_range=50, max_range=1_000, target_logs=10**6),
                    )
                    cp = await ix.run(until_head=True)
                    return cp, ix.range.size

            cp, final_size = asyncio.run(main())
        assert cp.number == w3.eth.block_number
        assert final_size <= 7  # learnt the provider's limit
        for what in (
            "alchemy",
            "infura",
            "maxrange",
            "quicknode",
            "wide",
            "413",
            "code",
            "timeout",
            "truncated",
            "malformed",
            "not-a-list",
            "503",
        ):
            assert proxy.counts.get(what, 0) >= 1, (what, proxy.counts)
        fresh = fresh_dump(url, target, db_kind, tmp_path, window=16)
        assert diff_dumps(dump_tables(engine, target.chain_id), fresh) == []
    finally:
        engine.dispose()


@pytest.mark.integration
def test_failover_and_rate_limits_across_two_urls_equal_a_direct_index(
    deployed: Any, new_db: Callable[[], str], db_kind: str, tmp_path: Path
) -> None:
    """Two URLs: the primary answers 429 half the time (Retry-After), dies mid-backfill and comes back;
    the index completes on the secondary, returns to the primary, and equals a direct index."""
    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=8, seed=7, blocks=40)
    head = w3.eth.block_number
    target = IndexTarget.from_deployment(dep)
    engine, store = open_store(new_db(), target, window=16)
    try:
        with (
            FaultProxy(url, rate_limit=0.5, retry_after="0.02", delay=0.005) as primary,
            # the secondary is slower, so that the backfill outlasts the primary's down_for after its
            # revival (a fast indexer otherwise finished on the secondary: nothing left to go back for)
            FaultProxy(url, delay=0.05) as secondary,
        ):

            async def main() -> Any:
                from keeper.indexer.sync import Indexer, SyncOptions

                async with RpcClient(
                    [primary.url, secondary.url], timeout=2.0, retries=4, backoff=0.01, down_for=0.3
                ) as rpc:
                    ix = Indexer(rpc, store, SyncOptions(reorg_window=16, initial_range=2, max_range=2))
                    run = asyncio.create_task(ix.run(until_head=True))
                    first = None
                    while ix.cp is None or first is None:
                        first = first if ix.cp is None else ix.cp.number
                        await asyncio.sleep(0.01)
                    while ix.cp.number < first + 10:  # mid-backfill
                        await asyncio.sleep(0.01)
                    killed_at = ix.cp.number
                    await asyncio.to_thread(primary.kill)
                    before = secondary.served
                    while secondary.served < before + 10:  # the secondary carries on
                        await asyncio.sleep(0.01)
                    assert not run.done()
                    await asyncio.to_thread(primary.revive)
                    revived = primary.served
                    cp = await run
                    return cp, killed_at, revived, rpc.failovers

            cp, killed_at, revived, failovers = asyncio.run(main())
        assert killed_at < head and cp.number == head
        assert primary.counts.get("429", 0) >= 3, primary.counts  # rate limited, and got through
        assert failovers >= 1 and secondary.served >= 10
        assert primary.served > revived, (primary.served, revived)  # back on the primary
        fresh = fresh_dump(url, target, db_kind, tmp_path, window=16)
        assert diff_dumps(dump_tables(engine, target.chain_id), fresh) == []
    finally:
        engine.dispose()


@pytest.mark.integration
def test_unreachable_node_is_one_clear_error(new_db: Callable[[], str], deployed: Any) -> None:
    from keeper.chain.rpc import RpcUnavailable
    from keeper.errors import KeeperError

    target = IndexTarget.from_deployment(deployed.deployment)
    engine, store = open_store(new_db(), target)
    try:
        with pytest.raises(KeeperError) as info:
            asyncio.run(_index_with(store, "http://127.0.0.1:9", retries=1))
        assert isinstance(info.value, RpcUnavailable) and "RPC unavailable" in str(info.value)
    finally:
        engine.dispose()


async def _index_with(store: Any, url: str, retries: int) -> Any:
    from keeper.indexer.sync import Indexer

    async with RpcClient(url, timeout=1.0, retries=retries, backoff=0.01) as rpc:
        return await Indexer(rpc, store).run(until_head=True)


@pytest.mark.integration
def test_a_growing_range_in_parts_equals_a_fresh_index(
    deployed: Any, new_db: Callable[[], str], db_kind: str, tmp_path: Path
) -> None:
    """The range grows from 2 blocks to its maximum of 16, each span wider than any answered before it
    asked in parts fetched at once: it still reaches its maximum (the parts count together, as one
    answer of their whole span; otherwise it stalls at 4), and the index equals a fresh one."""
    from keeper.indexer.testing import index_to_head

    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=8, seed=7, blocks=40)
    # then 64 empty blocks: how soon the range grows depends on when answers come back relative to
    # the next launches; these leave room to reach 16 however the timing falls
    w3.provider.make_request("anvil_mine", [hex(64)])
    target = IndexTarget.from_deployment(dep)
    engine, store = open_store(new_db(), target, window=16)
    try:
        with FaultProxy(url) as proxy:
            index_to_head(proxy.url, store, initial_range=2, first_range=2, max_range=16, fetch_concurrency=3)
        assert store.checkpoint().number == w3.eth.block_number  # type: ignore[union-attr]
        asked = [(a, b) for kind, a, b, _ in proxy.trace if kind == "in"]
        assert max(b - a + 1 for a, b in asked) == 16, asked
        fresh = fresh_dump(url, target, db_kind, tmp_path, window=16)
        assert diff_dumps(dump_tables(engine, target.chain_id), fresh) == []
    finally:
        engine.dispose()


@pytest.mark.integration
def test_a_slow_answer_does_not_hold_up_the_fetches_behind_it(
    deployed: Any, new_db: Callable[[], str], db_kind: str, tmp_path: Path
) -> None:
    """One eth_getLogs answer takes a second (a dense stretch on a busy node): the fetches after it go on
    meanwhile, up to FETCH_LOOKAHEAD x fetch_concurrency ranges held, instead of one per free slot; the
    ranges are still written in chain order and the index equals a fresh one."""
    from keeper.indexer.sync import FETCH_LOOKAHEAD
    from keeper.indexer.testing import index_to_head

    w3, dep, url = deployed.w3, deployed.deployment, deployed.anvil.url
    simulate(w3, dep, "calm", traders=8, seed=6, blocks=8)
    target = IndexTarget.from_deployment(dep)
    engine, store = open_store(new_db(), target, window=16)
    try:
        with FaultProxy(url, schedule=["ok", "slow"]) as proxy:
            index_to_head(proxy.url, store, initial_range=2, max_range=2, fetch_concurrency=2)
        assert store.checkpoint().number == w3.eth.block_number  # type: ignore[union-attr]
        trace = proxy.trace
        # the schedule goes by arrival: the slow range is the first or the second, whichever came second
        slow = next(t for t in trace if t[3] == "slow")
        went = trace.index(("out", *slow[1:]))
        ahead = {t[1:3] for t in trace[:went] if t[0] == "out" and t[1] > slow[1]}
        # ranges after the slow one in chain order, answered before it: two in flight at most, and
        # FETCH_LOOKAHEAD x 2 ranges held, the slow one among them (one slot's worth, 1, before the lookahead)
        assert len(ahead) == 2 * FETCH_LOOKAHEAD - 1 > 1, trace
        assert max(sum(1 if t[0] == "in" else -1 for t in trace[: i + 1]) for i in range(len(trace))) <= 2
        fresh = fresh_dump(url, target, db_kind, tmp_path, window=16)
        assert diff_dumps(dump_tables(engine, target.chain_id), fresh) == []
    finally:
        engine.dispose()
