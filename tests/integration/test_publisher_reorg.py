"""The publisher after a reorg to a chain of the same height: the head's number does not change, its hash
does; the page must be re-stamped on the new head at once, not left on the orphaned block until the next
block (on an idle chain: until ``max_interval``). Seen in the crash-day drill (3 blocks replaced by 3)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from publisher_support import Stack
from sqlalchemy import select

from keeper.chain.connect import contract
from keeper.chain.rpc import RpcClient
from keeper.publisher.models import FUND_SNAPSHOTS
from keeper.publisher.snapshot import Publisher
from keeper.store.testdb import throwaway_database

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(deployed: Any, tmp_path: Path) -> Iterator[Stack]:
    with throwaway_database("sqlite", tmp_path) as url:
        s = Stack(deployed, url)
        try:
            yield s
        finally:
            s.close()


def _last(stack: Stack) -> dict[str, Any]:
    with stack.engine.connect() as conn:
        q = select(FUND_SNAPSHOTS).order_by(FUND_SNAPSHOTS.c.id.desc()).limit(1)
        return dict(conn.execute(q).mappings().one())


def test_same_height_reorg_restamps_the_page(stack: Stack) -> None:
    async def main() -> tuple[str, str, int]:
        stop = asyncio.Event()
        async with RpcClient(stack.url) as rpc:
            await rpc.call("evm_mine", [])
            pub = Publisher(stack.engine, rpc, stack.dep, poll_interval=0.1, max_interval=10.0)
            task = asyncio.create_task(pub.run(stop))
            await asyncio.sleep(0.5)
            head = await rpc.call("eth_getBlockByNumber", ["latest", False])
            before = _last(stack)["block_hash"]
            # the head replaced by another block at the same height (another timestamp, another hash)
            await rpc.call("anvil_rollback", [1])
            await rpc.call("evm_mine", [int(head["timestamp"], 16) + 7])
            new = await rpc.call("eth_getBlockByNumber", ["latest", False])
            assert new["number"] == head["number"] and new["hash"] != head["hash"]
            await asyncio.sleep(1.0)  # 10 poll intervals, far below max_interval
            stop.set()
            await task
            return str(before), str(new["hash"]), int(new["number"], 16)

    before, new_hash, number = asyncio.run(main())
    last = _last(stack)
    assert before != new_hash
    assert (last["block_number"], last["block_hash"]) == (number, new_hash), "page left on the orphaned block"
    fund = contract(stack.w3, "InsuranceFund", stack.dep.address("InsuranceFund"))
    assert last["balance"] == fund.functions.balance().call(block_identifier=number)
