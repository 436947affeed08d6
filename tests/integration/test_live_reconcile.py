"""The reconciler against a real anvil: a book that is right is never "repaired"; a wrong account is
found and reloaded from the chain — at once when the book's block is settled, after a second look when
it is one of the last two blocks (anvil answers those from its live state, possibly already a block
ahead)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_abi import decode
from prometheus_client import CollectorRegistry

from keeper.chain.rpc import RpcClient
from keeper.devchain.simulate import simulate
from keeper.observability.metrics import KeeperMetrics
from keeper.risk.live import LiveBook, calldata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from liquidator_support import index_db, index_to_head  # noqa: E402

pytestmark = pytest.mark.integration


def test_reconcile_finds_a_wrong_account_and_only_a_wrong_one(deployed: Any, tmp_path: Path) -> None:
    dep, url = deployed.deployment, deployed.anvil.url
    simulate(deployed.w3, dep, "calm", traders=40, seed=3, blocks=2)
    engine, target = index_db(tmp_path, dep)

    async def main() -> None:
        rpc = RpcClient([url], timeout=30)
        head = int(await rpc.call("eth_blockNumber"), 16)
        await index_to_head(url, engine, target, head)  # the book below needs no more of the index
        try:
            live = LiveBook(rpc, engine, dep, metrics=KeeperMetrics(CollectorRegistry()))
            await live.start()
            head = int(await rpc.call("eth_blockNumber"), 16)
            assert live.book is not None and live.book_block == head
            await live.read_marks(head)
            held = [a for a, acct in live.book.accounts.items() if acct.positions and live.tradable(a)]
            assert len(held) >= 10
            # a right book: nothing to repair, near the head or settled
            assert await live.reconcile(200) == []
            await mine(rpc, 2)
            assert await live.reconcile(200) == [] and live.stats.mismatches == 0
            assert live.stats.reconciled >= 2 * len(held)

            victim = held[len(held) // 2]
            coll = await collateral(rpc, live.exchange, victim, live.book_block)
            assert live.book.accounts[victim].collateral == coll
            # settled block: the wrong account is found and reloaded at once
            live.book.set_collateral(victim, coll + 1)
            assert await live.reconcile(200) == [victim]
            assert live.stats.mismatches == 1 and live.book.accounts[victim].collateral == coll

            # the book at the head (one more block indexed): only a suspect until that block settles
            live.book_block = head = await mine(rpc, 1)
            live.book.set_collateral(victim, coll - 7)
            assert await live.reconcile(200) == [] and live.stats.mismatches == 1
            await mine(rpc, 1)
            assert await live.reconcile(200) == []  # one block past: not settled yet
            await mine(rpc, 1)
            assert await live.reconcile(200) == [victim]
            assert live.stats.mismatches == 2 and live.book.accounts[victim].collateral == coll
            assert await live.reconcile(200) == [] and live.stats.mismatches == 2
        finally:
            await rpc.close()

    asyncio.run(asyncio.wait_for(main(), 120))


async def mine(rpc: RpcClient, n: int) -> int:
    for _ in range(n):
        await rpc.call("evm_mine", [])
    return int(await rpc.call("eth_blockNumber"), 16)


async def collateral(rpc: RpcClient, exchange: str, account: str, block: int) -> int:
    data = calldata("collateralOf(address)", ["address"], [account])
    raw = await rpc.call("eth_call", [{"to": exchange, "data": data}, hex(block)])
    return int(decode(["int256"], bytes.fromhex(raw[2:]))[0])
