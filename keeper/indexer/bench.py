"""Indexing throughput on a simulated market (dev tool): ``python -m keeper.indexer.bench``.

Starts anvil, deploys, simulates ``--traders`` traders for ``--blocks`` blocks, then indexes the chain
from scratch into each database kind given (throwaway databases) and prints events/s; with
``--stages`` it also times the stages separately (fetch + decode, write) on one range.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from keeper.indexer.records import BlockHeader
from keeper.indexer.writer import FetchedRange


def main(argv: list[str] | None = None) -> int:
    from web3 import Web3

    from keeper.devchain.anvil import DEV_KEYS, Anvil
    from keeper.devchain.deploy import deploy
    from keeper.devchain.simulate import simulate
    from keeper.indexer.target import IndexTarget
    from keeper.indexer.testing import index_to_head, open_store
    from keeper.store.testdb import throwaway_database

    p = argparse.ArgumentParser(prog="python -m keeper.indexer.bench", description=__doc__)
    p.add_argument("--traders", type=int, default=2_000)
    p.add_argument("--blocks", type=int, default=30)
    p.add_argument("--db", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    p.add_argument("--initial-range", type=int, default=4, help="blocks in the first eth_getLogs range")
    p.add_argument("--stages", action="store_true", help="also time fetch + decode / write separately")
    args = p.parse_args(argv)

    with Anvil(extra_args=["--gas-limit", "1000000000"]) as node:
        w3 = Web3(Web3.HTTPProvider(node.url))
        accts = list(w3.eth.accounts)
        dep = deploy(w3, DEV_KEYS[0], accts[1], accts[2])
        t0 = time.monotonic()
        r = simulate(w3, dep, "calm", traders=args.traders, seed=1, blocks=args.blocks)
        print(f"simulated {r.txs_sent:,} txs in {r.mined_blocks} blocks ({time.monotonic() - t0:.1f} s)")
        target = IndexTarget.from_deployment(dep)
        for kind in args.db.split(","):
            with throwaway_database(kind.strip()) as url:
                engine, store = open_store(url, target)
                try:
                    t0 = time.monotonic()
                    run = index_to_head(node.url, store, initial_range=args.initial_range)
                    dt = time.monotonic() - t0
                    rate = run.stats.events / dt
                    print(f"{kind}: {run.stats.events:,} events in {dt:.2f} s = {rate:,.0f} events/s", end="")
                    print(f" ({run.stats.ranges} ranges)")
                finally:
                    engine.dispose()
                if args.stages:
                    with throwaway_database(kind.strip()) as url2:
                        _stages(node.url, w3, url2, target)
    return 0


def _stages(rpc_url: str, w3: Any, db_url: str, target: Any) -> None:
    from keeper.chain.rpc import RpcClient
    from keeper.indexer.sync import Indexer, SyncOptions
    from keeper.indexer.testing import open_store

    engine, store = open_store(db_url, target)
    head = w3.eth.block_number

    async def fetch() -> FetchedRange:
        async with RpcClient(rpc_url) as rpc:
            return await Indexer(rpc, store, SyncOptions())._fetch_range(target.start_block, head, head)

    try:
        t0 = time.monotonic()
        fr = asyncio.run(fetch())
        t1 = time.monotonic()
        store.prepare(fr)  # already prepared while fetched (a thread or a decode worker)
        t2 = time.monotonic()
        raw = w3.provider.make_request("eth_getBlockByNumber", [hex(target.start_block - 1), False])
        store.commit_range(fr, store.initialize(BlockHeader.from_rpc(raw["result"])))
        t3 = time.monotonic()
    finally:
        engine.dispose()
    print(f"  stages: fetch + decode {t1 - t0:.2f} s, write {t3 - t2 + (t2 - t1):.2f} s")


if __name__ == "__main__":
    raise SystemExit(main())
