"""The publisher and the public server wired from settings (``keeper publish`` / ``keeper serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from aiohttp import web

from keeper.chain.deployments import load as load_deployment
from keeper.chain.rpc import RpcClient
from keeper.errors import KeeperError
from keeper.observability.metrics import start_metrics

log = logging.getLogger("keeper.server")


def _deployment(settings: Any) -> Any:
    dep = load_deployment(settings.chain.deployments_file)
    if settings.chain.chain_id is not None and settings.chain.chain_id != dep.chain_id:
        raise KeeperError(
            f"the config says chain {settings.chain.chain_id} but the deployments file is for chain "
            f"{dep.chain_id}"
        )
    return dep


def _engine(settings: Any) -> Any:
    import keeper.publisher.models  # noqa: F401  (registers the tables)
    from keeper.indexer.service import open_database

    return open_database(settings)


def _rpc(settings: Any) -> RpcClient:
    return RpcClient(settings.chain.rpc_urls, timeout=settings.chain.request_timeout)


async def _wait_for_signal(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def run_publisher(settings: Any) -> None:
    from keeper.publisher.snapshot import Publisher

    dep = _deployment(settings)
    engine = _engine(settings)

    async def main() -> None:
        stop = asyncio.Event()
        async with _rpc(settings) as rpc:
            pub = Publisher.from_settings(settings, engine, rpc, dep)
            task = asyncio.create_task(pub.run(stop))
            await _wait_for_signal(stop)
            await task

    try:
        asyncio.run(main())
    finally:
        engine.dispose()


async def start_server(settings: Any, engine: Any, dep: Any, rpc: RpcClient | None, *, host: str, port: int,
                       metrics: bool = True) -> list[web.AppRunner]:  # fmt: skip
    """Starts the public app (and the internal metrics app); returns the runners to clean up."""
    from keeper.api.app import ServerConfig, make_app

    cfg = ServerConfig.from_settings(
        settings, dep.chain_id, dep.contracts.get("Exchange"), dep.contracts.get("InsuranceFund")
    )
    runners = []
    runner = web.AppRunner(make_app(engine, cfg, rpc), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    runners.append(runner)
    log.info("serving the public page on http://%s:%d/", host, port)
    if metrics:
        try:
            runners += await start_metrics(settings)
        except KeeperError:  # "cannot listen on <metrics address>": the page's site is closed too
            await runner.cleanup()
            raise
    return runners


def serve_child(settings: Any, host: str, port: int, parent_pid: int, ready: Any) -> None:
    """The page server of ``keeper run`` in its own process (multiprocessing "spawn" target).

    Serves the public page and API only: no publisher (the leader's process writes the snapshots) and
    no metrics (those live in the parent's registry and are served by the parent). Sends ``None`` on
    ``ready`` once listening, or the error text. Stops on SIGTERM, and on its own when the parent is
    gone (``os.getppid()`` changes); ignores SIGINT (the parent forwards a stop as SIGTERM, so a Ctrl-C
    to the terminal's process group does not make it exit before the parent asks).
    """
    import os

    from keeper.observability.logging import configure_from_settings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_from_settings(settings)
    try:
        dep = _deployment(settings)
        engine = _engine(settings)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails
        ready.send(f"{type(exc).__name__}: {exc}")
        raise

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with _rpc(settings) as rpc:
            try:
                runners = await start_server(settings, engine, dep, rpc, host=host, port=port, metrics=False)
            except OSError as exc:
                ready.send(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
                return
            ready.send(None)
            try:
                while not stop.is_set():
                    if os.getppid() != parent_pid:
                        log.warning("the keeper process is gone: the page server stops")
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.5)
            finally:
                for r in runners:
                    await r.cleanup()

    try:
        asyncio.run(main())
    finally:
        engine.dispose()


def run_server(
    settings: Any, *, publish: bool = False, host: str | None = None, port: int | None = None
) -> None:
    from keeper.publisher.snapshot import Publisher

    dep = _deployment(settings)
    engine = _engine(settings)

    async def main() -> None:
        stop = asyncio.Event()
        async with _rpc(settings) as rpc:
            try:
                runners = await start_server(
                    settings,
                    engine,
                    dep,
                    rpc,
                    host=host or settings.server.host,
                    port=port or settings.server.port,
                )
            except OSError as exc:
                raise KeeperError(f"cannot listen: {exc.strerror or exc}") from None
            task = (
                asyncio.create_task(Publisher.from_settings(settings, engine, rpc, dep).run(stop))
                if publish
                else None
            )
            try:
                await _wait_for_signal(stop)
            finally:
                if task is not None:
                    await task
                for r in runners:
                    await r.cleanup()

    try:
        asyncio.run(main())
    finally:
        engine.dispose()
