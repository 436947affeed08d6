"""Oracle reads against a real anvil: an answer newer than the block it is read at (anvil mining a block
while the batch runs) is read once more instead of costing a block of liquidations; a feed that really
claims a future time stays refused; a normal read costs one batch."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
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
ETH = 1


def test_a_future_answer_is_read_again_and_a_real_one_stays_refused(deployed: Any, tmp_path: Path) -> None:
    dep, url, w3 = deployed.deployment, deployed.anvil.url, deployed.w3
    simulate(w3, dep, "calm", traders=20, seed=3, blocks=2)
    engine, target = index_db(tmp_path, dep)
    feed = dep.market(ETH).primary
    owner = "0x" + w3.eth.call({"to": feed, "data": calldata("owner()")})[-20:].hex()

    async def main() -> None:
        rpc = RpcClient([url], timeout=30)
        head = int(await rpc.call("eth_blockNumber"), 16)
        await index_to_head(url, engine, target, head)  # the book below needs no more of the index
        batches: list[int] = []
        between: list[Callable[[], Awaitable[None]]] = []  # run once after the next batch (the race)
        real_batch = rpc.batch

        async def counting_batch(calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
            res = await real_batch(calls)
            batches.append(len(calls))
            while between:
                await between.pop()()
            return res

        rpc.batch = counting_batch  # type: ignore[method-assign]

        async def send(data: str) -> int:
            await rpc.call("anvil_impersonateAccount", [owner])
            tx = {"from": owner, "to": feed, "data": data, "gas": hex(300_000)}
            h = await rpc.call("eth_sendTransaction", [tx])
            # anvil's automine answers before the block is in: wait for the receipt, take its block
            while (r := await rpc.call("eth_getTransactionReceipt", [h])) is None:
                await asyncio.sleep(0.01)
            assert r["status"] == "0x1", r
            return int(r["blockNumber"], 16)

        async def price() -> int:
            raw = await rpc.call("eth_call", [{"to": feed, "data": calldata("latestRoundData()")}, "latest"])
            return int(
                decode(["uint80", "int256", "uint256", "uint256", "uint80"], bytes.fromhex(raw[2:]))[1]
            )

        async def future_answer() -> int:
            now = int((await rpc.call("eth_getBlockByNumber", ["latest", False]))["timestamp"], 16)
            data = calldata("setRoundData(int256,uint80,uint256)", ["int256", "uint80", "uint256"],
                            [await price(), 10**6, now + 10**8])  # fmt: skip
            return await send(data)

        async def normal_answer() -> None:
            await send(calldata("setAnswer(int256)", ["int256"], [await price()]))

        try:
            live = LiveBook(rpc, engine, dep, metrics=KeeperMetrics(CollectorRegistry()))
            await live.start()
            # a normal read: one batch, every market trusted
            batches.clear()
            await live.read_marks(int(await rpc.call("eth_blockNumber"), 16))
            assert len(batches) == 1 and all(live.trusted.values()), live.quotes

            # the race, staged: the first read sees an answer newer than its block; by the second read
            # the next block holds a sane one. One block of this feed is not lost.
            block = await future_answer()
            between.append(normal_answer)
            batches.clear()
            await live.read_marks(block)
            assert len(batches) == 2
            assert live.trusted[ETH] is True and live.mark_block == block + 1, live.quotes[ETH]

            # a feed that really claims a future time: read again, still refused
            block = await future_answer()
            batches.clear()
            await live.read_marks(block)
            assert len(batches) == 2, live.quotes[ETH]
            assert live.trusted[ETH] is False
            assert any("timestamp in the future" in r for r in live.quotes[ETH].verdict.reasons)
        finally:
            await rpc.close()

    asyncio.run(main())
