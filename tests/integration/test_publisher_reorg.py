"""The publisher's loop against a chain that is being mined and rolled back (the crash-day page checks).

1. A reorg to a chain of the same height changes no head number, only hashes: the page must be
   re-stamped at once, not left on an orphaned block until the next block (or ``max_interval``).
2. Every figure equals the chain at the block it is stamped with, while blocks are mined and rolled
   back under the loop: anvil answers the head's number while its state is already part-way to the next
   block (or still the pre-rollback one), so the loop reads ``lag_blocks`` (1) behind the head. With
   ``lag_blocks=0`` it failed in about half of the runs here (a timing window: e.g. block 47 stamped
   with block 48's balance); with 1, never.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from publisher_support import Stack
from sqlalchemy import select

from keeper.chain.connect import contract
from keeper.chain.rpc import RpcClient
from keeper.devchain.simulate import Rpc, calldata
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


def _rows(stack: Stack) -> list[dict[str, Any]]:
    with stack.engine.connect() as conn:
        return [
            dict(r) for r in conn.execute(select(FUND_SNAPSHOTS).order_by(FUND_SNAPSHOTS.c.id)).mappings()
        ]


def test_same_height_reorg_restamps_the_page(stack: Stack) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        stop = asyncio.Event()
        async with RpcClient(stack.url) as rpc:
            for _ in range(3):
                await rpc.call("evm_mine", [])
            pub = Publisher(stack.engine, rpc, stack.dep, poll_interval=0.1, max_interval=10.0)
            task = asyncio.create_task(pub.run(stop))
            await asyncio.sleep(0.5)
            head = await rpc.call("eth_getBlockByNumber", ["latest", False])
            old = await rpc.call("eth_getBlockByNumber", [hex(int(head["number"], 16) - 1), False])
            # the last two blocks replaced by two others (other timestamps, other hashes): same height
            await rpc.call("anvil_rollback", [2])
            for k in (1, 2):
                await rpc.call("evm_mine", [int(head["timestamp"], 16) + 7 * k])
            new = await rpc.call("eth_getBlockByNumber", [hex(int(head["number"], 16) - 1), False])
            assert new["number"] == old["number"] and new["hash"] != old["hash"]
            await asyncio.sleep(1.0)  # 10 poll intervals, far below max_interval
            stop.set()
            await task
            return old, new

    old, new = asyncio.run(main())
    rows = _rows(stack)
    assert any(r["block_hash"] == old["hash"] for r in rows), "the page was never stamped on the old block"
    last = rows[-1]
    assert (last["block_number"], last["block_hash"]) == (int(new["number"], 16), new["hash"]), (
        "page left on the orphaned block"
    )
    fund = contract(stack.w3, "InsuranceFund", stack.dep.address("InsuranceFund"))
    assert last["balance"] == fund.functions.balance().call(block_identifier=last["block_number"])


def test_loop_figures_equal_the_chain_while_mining_and_rolling_back(stack: Stack) -> None:
    fund, usdc = stack.dep.address("InsuranceFund"), stack.dep.address("MockUSDC")
    rpc = Rpc(stack.url)
    sender = rpc.call("eth_accounts")[0]
    want: dict[str, int] = {}  # block hash -> the fund's balance in that block
    done = threading.Event()

    def chain() -> None:
        """Blocks of 150 transactions that each change the fund's balance (mining one takes a while:
        the window in which anvil's state is ahead of its head), a 2-block rollback every 3 blocks."""
        data = calldata("faucet", ("address", "uint256"), (fund, 1_000_000))
        rpc.call("evm_setAutomine", False)
        try:
            for _ in range(25):
                for _ in range(3):
                    nonce = int(rpc.call("eth_getTransactionCount", sender, "pending"), 16)
                    tx = {"from": sender, "to": usdc, "data": data, "gas": hex(100_000)}
                    rpc.batch(
                        [("eth_sendTransaction", [{**tx, "nonce": hex(nonce + k)}]) for k in range(150)]
                    )
                    rpc.call("evm_mine")
                    blk = rpc.call("eth_getBlockByNumber", "latest", False)
                    bal = rpc.eth_calls([(fund, calldata("balance"))], blk["number"])[0]
                    assert bal is not None
                    want[blk["hash"]] = int(bal.hex(), 16)
                rpc.call("anvil_rollback", 2)
        finally:
            rpc.call("evm_setAutomine", True)
            done.set()

    async def main() -> int:
        stop = asyncio.Event()
        async with RpcClient(stack.url) as rpc_a:
            pub = Publisher(stack.engine, rpc_a, stack.dep, poll_interval=0.01, max_interval=0.05)
            task = asyncio.create_task(pub.run(stop))
            t = threading.Thread(target=chain)
            t.start()
            while not done.is_set():
                await asyncio.sleep(0.05)
            t.join()
            stop.set()
            await task
            return pub.published

    published = asyncio.run(main())
    rows = [r for r in _rows(stack) if r["block_hash"] in want]
    wrong = [(r["block_number"], r["balance"], want[r["block_hash"]]) for r in rows if r["balance"] != want[r["block_hash"]]]  # fmt: skip # noqa: E501
    assert published > 20 and len(rows) > 20, (published, len(rows))
    assert not wrong, f"{len(wrong)} of {len(rows)} snapshots show another block's balance, e.g. {wrong[:3]}"
