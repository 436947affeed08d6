"""The indexer wired from settings: what ``keeper index`` and ``keeper status`` (and the keeper) run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from sqlalchemy import Engine

from keeper.chain.rpc import RpcClient, RpcError, RpcTransportError
from keeper.errors import KeeperError
from keeper.indexer.decode import EventDecoder
from keeper.indexer.progress import Progress
from keeper.indexer.sync import Indexer, SyncOptions, fork_decode_workers
from keeper.indexer.target import IndexTarget
from keeper.indexer.writer import CheckpointState, IndexStore, table_counts
from keeper.store.engine import make_engine, redact
from keeper.store.migrate import current_revision, head_revision, upgrade

log = logging.getLogger("keeper.indexer")


def load_target(settings: Any, start_block: int | None = None) -> IndexTarget:
    start = start_block if start_block is not None else settings.indexer.start_block
    target = IndexTarget.from_file(settings.chain.deployments_file, start)
    if settings.chain.chain_id is not None and settings.chain.chain_id != target.chain_id:
        raise KeeperError(
            f"the config says chain {settings.chain.chain_id} but the deployments file is for chain "
            f"{target.chain_id}"
        )
    return target


def open_database(settings: Any, *, migrate: bool | None = None) -> Engine:
    db = settings.database
    engine = make_engine(db.url, echo=db.echo, busy_timeout_ms=db.busy_timeout_ms)
    if migrate if migrate is not None else db.auto_migrate:
        upgrade(engine)
    else:
        rev = current_revision(engine)
        if rev != head_revision():
            raise KeeperError(
                f"the database {redact(db.url)} is at schema {rev or 'none'}, expected {head_revision()}: "
                "run keeper db upgrade"
            )
    return engine


def make_rpc(settings: Any, *, retries: int = 6) -> RpcClient:
    """The indexer's client: more patient than the executor's (a backfill can wait for a node)."""
    return RpcClient(
        settings.chain.rpc_urls,
        timeout=settings.chain.request_timeout,
        retries=retries,
        backoff=0.25,
        max_backoff=10.0,
    )


def make_indexer(
    settings: Any,
    engine: Engine,
    target: IndexTarget,
    rpc: RpcClient,
    progress: Progress | None = None,
    metrics: Any = None,
    *,
    head_age: bool = False,
    workers: ProcessPoolExecutor | None = None,
) -> Indexer:
    """``metrics``: a :class:`keeper.observability.metrics.KeeperMetrics` the indexer feeds; ``head_age``:
    it also feeds ``keeper_head_age_seconds`` (one more call in each poll's batch); ``workers``: decode
    workers forked for its first backfill (:func:`keeper.indexer.sync.fork_decode_workers`)."""
    store = IndexStore(engine, target, EventDecoder.for_contracts(), settings.indexer.reorg_window)
    ws = settings.chain.ws_url if settings.indexer.use_ws else None
    opts = SyncOptions.from_settings(settings.indexer)
    return Indexer(
        rpc, store, opts, progress=progress, ws_url=ws, metrics=metrics, head_age=head_age, workers=workers
    )


def run_index(
    settings: Any, *, until_head: bool, start_block: int | None = None, progress: bool = True
) -> CheckpointState | None:
    """Runs the indexer in a new event loop until the head (or until SIGINT/SIGTERM).

    Following the chain (not ``until_head``) with ``metrics.enabled``, it serves the indexer's metrics
    (:data:`keeper.observability.metrics.METRICS`) on ``metrics.host:metrics.port`` while it runs; a port
    that cannot be bound is a :class:`KeeperError` before anything is indexed."""
    target = load_target(settings, start_block)
    engine = open_database(settings)
    workers = fork_decode_workers(settings.indexer.decode_workers, settings.indexer.decode_niceness)
    try:
        return asyncio.run(
            _run(settings, engine, target, until_head=until_head, progress=progress, workers=workers)
        )
    finally:
        if workers is not None:  # also when no catch-up took them (a catch-up stops those it took)
            workers.shutdown(wait=False, cancel_futures=True)
        engine.dispose()


async def _run(
    settings: Any,
    engine: Engine,
    target: IndexTarget,
    *,
    until_head: bool,
    progress: bool,
    workers: ProcessPoolExecutor | None,
) -> CheckpointState | None:
    from keeper.observability.metrics import METRICS, start_metrics

    serve_metrics = not until_head and settings.metrics.enabled  # a job that exits has nothing to scrape
    runners = await start_metrics(settings) if serve_metrics else []
    try:
        return await _index(settings, engine, target, until_head=until_head, progress=progress,
                            metrics=METRICS if serve_metrics else None, workers=workers)  # fmt: skip
    finally:
        for r in runners:
            await r.cleanup()


async def _index(
    settings: Any,
    engine: Engine,
    target: IndexTarget,
    *,
    until_head: bool,
    progress: bool,
    metrics: Any,
    workers: ProcessPoolExecutor | None,
) -> CheckpointState | None:
    stop = asyncio.Event()
    async with make_rpc(settings) as rpc:
        ix = make_indexer(settings, engine, target, rpc, Progress() if progress else None, metrics,
                          head_age=metrics is not None, workers=workers)  # fmt: skip
        task = asyncio.create_task(ix.run(until_head=until_head, stop=stop))
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if not stop.is_set():
                log.info("stopping (the range being written is committed first)")
                stop.set()
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
        cp: CheckpointState | None
        try:
            cp = await task
        except asyncio.CancelledError:
            cp = ix.cp
            if not stop.is_set():
                raise
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        if cp is not None:
            log.info(
                "checkpoint: block %d (%s), %d events this run, %d reorgs",
                cp.number,
                cp.hash,
                ix.stats.events,
                ix.stats.reorgs,
            )
        return cp


# ------------------------------------------------------------------------------------ status


def status(settings: Any, *, query_chain: bool = True) -> dict[str, Any]:
    """What ``keeper status`` prints: head, checkpoint, lag, event counts, table sizes."""
    target = load_target(settings)
    engine = make_engine(settings.database.url, busy_timeout_ms=settings.database.busy_timeout_ms)
    try:
        rev = current_revision(engine)
        out: dict[str, Any] = {
            "chain_id": target.chain_id,
            "database": redact(settings.database.url),
            "schema": rev,
            "schema_head": head_revision(),
            "start_block": target.start_block,
            "checkpoint": None,
            "head": None,
            "safe_head": None,
            "lag": None,
            "rpc": settings.chain.rpc_urls[0],
            "rpc_error": None,
            "events": {},
            "events_total": 0,
            "tables": {},
        }
        if rev is not None:
            store = IndexStore(engine, target, EventDecoder.for_contracts(), settings.indexer.reorg_window)
            cp = store.checkpoint()
            if cp is not None:
                out["checkpoint"] = {"block": cp.number, "hash": cp.hash}
                out["start_block"] = cp.start_block
                out["deployment_matches"] = cp.deployment_key == target.deployment_key
            out["events"] = store.event_counts()
            out["events_total"] = sum(out["events"].values())
            out["tables"] = table_counts(engine, target.chain_id)
            window = store.window_blocks()
            out["window"] = {"blocks": len(window), "lowest": window[-1][0] if window else None,
                             "highest": window[0][0] if window else None}  # fmt: skip
        if query_chain:
            try:
                cid, head = asyncio.run(_head(settings))
                out["head"] = head
                out["safe_head"] = head - settings.indexer.confirmations
                if cid != target.chain_id:
                    out["rpc_error"] = f"wrong chain: the node serves chain {cid}"
                elif out["checkpoint"] is not None:
                    out["lag"] = max(0, out["safe_head"] - out["checkpoint"]["block"])
            except (KeeperError, RpcError, RpcTransportError, OSError) as exc:
                out["rpc_error"] = str(exc)
        return out
    finally:
        engine.dispose()


async def _head(settings: Any) -> tuple[int, int]:
    async with RpcClient(
        settings.chain.rpc_urls, timeout=min(5.0, settings.chain.request_timeout), retries=1
    ) as rpc:
        return await rpc.chain_id_and_head()
