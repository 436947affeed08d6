"""Liquidate: run the liquidation loop (live book from the index, oracle guard, batches via the tx manager).

--dry-run prints what would be sent now (batches, accounts, markets, expected close sizes and penalties)
and exits. Without it the loop runs until Ctrl-C; the indexer must run separately (keeper index), or
pass --with-indexer to run it in the same process. The key: executor.keystore + executor.password_file,
or on a dev chain the environment variable named by executor.key_env (default KEEPER_PRIVATE_KEY).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    parser.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (default: config/dev.toml)"
    )
    parser.add_argument("--dry-run", action="store_true", help="show what would be sent now, send nothing")
    parser.add_argument("--with-indexer", action="store_true", help="run the indexer in the same process")
    parser.add_argument("--json", action="store_true", help="--dry-run: one JSON object on stdout")


async def _main(settings: Any, args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import signal

    import orjson

    from keeper.chain.deployments import Deployment
    from keeper.chain.rpc import RpcClient
    from keeper.executor.journal import TxJournal
    from keeper.executor.keys import load_signer
    from keeper.executor.liquidator import Liquidator, run_loop
    from keeper.executor.txmanager import TxManager
    from keeper.indexer.service import load_target, make_indexer, make_rpc, open_database
    from keeper.risk.live import LiveBook

    ex, rk = settings.executor, settings.risk
    dep = Deployment.load(settings.chain.deployments_file)
    engine = open_database(settings)
    rpc = RpcClient(settings.chain.rpc_urls, timeout=settings.chain.request_timeout)
    try:
        live = LiveBook(rpc, engine, dep, max_deviation_bps=rk.max_oracle_deviation_bps)
        await live.start()
        await asyncio.to_thread(live.sync_from_db)
        await live.read_marks()
        if args.dry_run:
            liq = Liquidator(live, None, rpc, min_reward=ex.min_reward, fill=ex.batch_fill,
                             max_batches=ex.max_batches_per_block)  # fmt: skip
            batches = liq.plan(liq.candidates())
            out: dict[str, Any] = {
                "book_block": live.book_block,
                "mark_block": live.mark_block,
                "oracles": {live.symbols[m]: q.verdict.describe() for m, q in live.quotes.items()},
                "batches": [
                    [
                        {
                            "account": e.account,
                            "market": live.symbols[e.market],
                            "close_size": str(e.close_size),  # 1e18 units: > 64 bits
                            "full": e.full,
                            "penalty": e.penalty,
                            "keeper_reward": e.reward,
                            "shortfall": e.shortfall,
                        }
                        for e in batch
                    ]
                    for batch in batches
                ],  # fmt: skip
            }
            if args.json:
                print(orjson.dumps(out).decode())
                return 0
            print(f"index block {live.book_block}, marks at block {live.mark_block}")
            for sym, v in out["oracles"].items():
                print(f"  oracle {sym}: {v}")
            if not batches:
                print("nothing to liquidate")
            for i, batch in enumerate(batches):
                print(f"batch {i + 1}: {len(batch)} accounts (liquidateBatch)")
                for e in batch:
                    print(
                        f"  {e.account} {live.symbols[e.market]:<5} close {e.close_size / 1e18:.6f} "
                        f"({'full' if e.full else 'partial'}), penalty ${e.penalty / 1e6:,.2f} "
                        f"(keeper ${e.reward / 1e6:,.2f}), shortfall ${e.shortfall / 1e6:,.2f}"
                    )
            return 0
        signer = load_signer(ex.keystore, ex.password_file, ex.key_env)
        journal = TxJournal(ex.journal_url or engine)
        txm = TxManager(rpc, signer, journal, "liquidation", dep.chain_id, int(ex.max_fee_cap_gwei * 10**9),
                        ex.replace_after_blocks, ex.bump_pct)  # fmt: skip
        liq = Liquidator(live, txm, rpc, min_reward=ex.min_reward, fill=ex.batch_fill,
                         max_batches=ex.max_batches_per_block)  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(run_loop(
            live, liq, rpc, stop=stop, poll_interval=ex.poll_interval,
            reconcile_every=rk.reconcile_every_blocks, reconcile_accounts=rk.reconcile_accounts,
        ))]  # fmt: skip
        if args.with_indexer:
            irpc = make_rpc(settings)
            ix = make_indexer(settings, engine, load_target(settings), irpc)
            tasks.append(asyncio.create_task(ix.run(stop=stop)))
        print(f"liquidating as {signer.address} (Ctrl-C to stop)")
        await asyncio.gather(*tasks)
        s = liq.stats
        print(f"stopped: {s.sent_batches} batches sent, {s.liquidated} liquidated, {s.lost_race} lost races")
        return 0
    finally:
        await rpc.close()
        engine.dispose()


def run(args: argparse.Namespace) -> int:
    import asyncio

    from keeper.config import load_settings
    from keeper.observability.logging import configure_from_settings

    settings = load_settings(args.config)
    configure_from_settings(settings)
    return asyncio.run(_main(settings, args))
