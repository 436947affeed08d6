"""``keeper run``: the whole keeper in one asyncio process.

The shape at a glance (after pymaker's Lifecycle):

* **on startup** — load and check the config, open the database (migrated), load the deployment,
  recover in-flight transactions from the journal, build the live book from the index;
* **every block** — index new logs (reorg-safe), refresh the book and the oracle verdicts, send
  liquidation batches, collect receipts, reconcile a few accounts against the chain;
* **on chain time** — settle funding when due (own key), run ADL when triggered (own key), watch the
  insurance fund for shortfalls;
* **every ~10 s / each head** — publish the insurance fund and market figures read at one block;
* **always** — serve the public page and API in a child process (:class:`PageServerProcess`, so that
  page load never shares the liquidator's event loop), and metrics on an internal address;
* **on shutdown** (SIGINT/SIGTERM) — stop taking new work, let the indexer commit or roll back the
  range in flight, leave in-flight transactions tracked in the journal for the next start.

Several nodes on one PostgreSQL database elect a leader (:mod:`keeper.leader`): only the leader
indexes, publishes and sends transactions (each broadcast is fenced by its epoch); every node serves
the page. On SQLite a node is always the leader.

Each part also runs alone: ``keeper index``, ``keeper liquidate``, ``keeper funding``,
``keeper serve --publish``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from keeper.errors import KeeperError

log = logging.getLogger("keeper.runner")


@dataclass
class Parts:
    """Which loops this node runs (all by default)."""

    index: bool = True
    liquidate: bool = True
    funding: bool = True
    publish: bool = True
    serve: bool = True


@dataclass
class KeeperNode:
    settings: Any
    parts: Parts = field(default_factory=Parts)
    tasks: dict[str, asyncio.Task[Any]] = field(default_factory=dict)
    #: The alert dispatcher of the current term (operator alerts and user warnings).
    dispatcher: Any = None
    #: The liquidation key's address, once loaded (for the balance watch).
    keeper_address: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        import keeper.publisher.models  # noqa: F401  (registers the publisher's tables)
        from keeper.chain.deployments import Deployment
        from keeper.chain.rpc import RpcClient
        from keeper.indexer.service import open_database
        from keeper.leader import LeaderElector

        s = self.settings
        dep = Deployment.load(s.chain.deployments_file)
        if s.chain.chain_id is not None and s.chain.chain_id != dep.chain_id:
            raise KeeperError(
                f"the config says chain {s.chain.chain_id}, the deployments file chain {dep.chain_id}"
            )
        engine = open_database(s, migrate=True)
        rpc = RpcClient(s.chain.rpc_urls, timeout=s.chain.request_timeout)
        runners: list[Any] = []
        page: PageServerProcess | None = None
        watch: asyncio.Future[Any] | None = None
        failure: list[BaseException] = []
        try:
            if self.parts.serve:
                from keeper.observability.metrics import start_metrics

                page = PageServerProcess(s, s.server.host, s.server.port)
                await page.start()
                watch = asyncio.ensure_future(page.watch(stop, failure))
                runners = await start_metrics(s)  # KeeperError "cannot listen on ..." when it cannot
            elector = LeaderElector.from_settings(s, engine, dep.chain_id, dep.address("Exchange")).start()
            try:
                await self._follow_leadership(elector, engine, rpc, dep, stop)
            finally:
                elector.stop()
        finally:
            stop.set()
            if watch is not None:
                watch.cancel()
            await self._drain()
            if page is not None:
                await page.stop()
            for r in runners:
                await r.cleanup()
            await rpc.close()
            engine.dispose()
        if failure:
            raise failure[0]

    # ------------------------------------------------------------------ leadership

    async def _follow_leadership(
        self, elector: Any, engine: Any, rpc: Any, dep: Any, stop: asyncio.Event
    ) -> None:
        """Stands by until leader; leads (index, publish, send) until stopped or the term ends."""
        from keeper.leader import LostLeadership

        loop = asyncio.get_running_loop()
        term_over = asyncio.Event()
        elector.on_change(lambda fence: fence is None and loop.call_soon_threadsafe(term_over.set))
        while not stop.is_set():
            fence = await elector.wait_for_leadership(timeout=1.0)
            if fence is None:
                continue
            log.info("leading as %s (epoch %d)", fence.node, fence.epoch)
            term_over.clear()
            lead_stop = asyncio.Event()
            relay = asyncio.ensure_future(self._first(stop, term_over, then=lead_stop))
            try:
                self._lead(engine, rpc, dep, lead_stop, elector.assert_leader)
                await self._supervise(lead_stop)
            except LostLeadership as exc:
                log.warning("%s", exc)
            finally:
                lead_stop.set()
                relay.cancel()
                await self._drain()
                if self.dispatcher is not None:
                    await self.dispatcher.close()
                    self.dispatcher = None
            if not stop.is_set():
                log.warning("no longer the leader: standing by (the page keeps serving)")

    @staticmethod
    async def _first(*events: asyncio.Event, then: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            then.set()

    def _lead(self, engine: Any, rpc: Any, dep: Any, stop: asyncio.Event, guard: Any) -> None:
        from keeper.indexer.service import load_target, make_indexer, make_rpc
        from keeper.observability.metrics import METRICS

        s = self.settings
        self.dispatcher = self._make_dispatcher(engine, dep)
        if self.parts.index:
            irpc = make_rpc(s)
            ix = make_indexer(s, engine, load_target(s), irpc, metrics=METRICS)
            self._start("index", self._closing(self._index(ix.run(stop=stop)), irpc.close))
        if self.parts.publish:
            from keeper.publisher.snapshot import Publisher

            self._start("publish", Publisher.from_settings(s, engine, rpc, dep).run(stop))
        if self.parts.liquidate:
            self._start("liquidate", self._liquidate(engine, rpc, dep, stop, guard))
        if self.parts.funding:
            from keeper.executor.maintenance import run_maintenance

            self._start(
                "funding",
                run_maintenance(s, dep, engine, rpc, stop, send_guard=guard, dispatcher=self.dispatcher),
            )
        if s.anomaly.enabled:
            from keeper.risk.anomaly import AnomalyWatch

            watch = AnomalyWatch(engine, dep.chain_id, s.anomaly, self.dispatcher,
                                 symbols={m.id: m.symbol for m in dep.markets})  # fmt: skip
            self._start("anomaly", watch.run(stop))
        from keeper.alerts.watch import OperatorWatch

        self._start(
            "watch",
            OperatorWatch(rpc, engine, dep.chain_id, s.watch, self.dispatcher,
                          address=lambda: self.keeper_address).run(stop),
        )  # fmt: skip
        log.info("leader parts running: %s", ", ".join(self.tasks) or "nothing")

    async def _index(self, run: Awaitable[Any]) -> Any:
        """The indexer; a reorg deeper than its window stops it — and the node — after the
        ``deep_reorg`` operator alert went out (the index cannot be repaired in place)."""
        try:
            return await run
        except Exception as exc:
            from keeper.alerts.dispatcher import deep_reorg_alert

            alert = deep_reorg_alert(exc)
            if alert is not None and self.dispatcher is not None:
                try:
                    await asyncio.wait_for(self.dispatcher.alert(alert), 60)
                except Exception as send_exc:  # noqa: BLE001 - the indexer's error is the one to report
                    log.warning("deep_reorg alert delivery failed: %s", send_exc)
            raise

    def _make_dispatcher(self, engine: Any, dep: Any) -> Any:
        from keeper.alerts.contacts import SqlContacts
        from keeper.alerts.dispatcher import AlertDispatcher

        a = self.settings.alerts
        if not a.enabled:
            return AlertDispatcher()
        contacts = SqlContacts(engine, dep.chain_id, allow_private=a.allow_private_webhooks)
        return AlertDispatcher.from_settings(a, contacts=contacts)

    async def _drain(self) -> None:
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=15)
        self.tasks.clear()

    # ------------------------------------------------------------------ parts

    async def _liquidate(self, engine: Any, rpc: Any, dep: Any, stop: asyncio.Event, guard: Any) -> None:
        from keeper.executor.journal import TxJournal
        from keeper.executor.keys import load_signer
        from keeper.executor.liquidator import Liquidator, run_loop
        from keeper.executor.txmanager import TxManager
        from keeper.risk.live import LiveBook

        ex, rk = self.settings.executor, self.settings.risk
        signer = load_signer(ex.keystore, ex.password_file, ex.key_env)
        journal = TxJournal(ex.journal_url or engine)
        txm = TxManager(
            rpc, signer, journal, "liquidation", dep.chain_id, int(ex.max_fee_cap_gwei * 10**9),
            ex.replace_after_blocks, ex.bump_pct, send_guard=guard,
        )  # fmt: skip
        await txm.recover()
        from keeper.alerts.watch import UserWarnings
        from keeper.observability.metrics import METRICS

        self.keeper_address = signer.address
        live = LiveBook(
            rpc, engine, dep, max_deviation_bps=rk.max_oracle_deviation_bps, alerts=self.dispatcher
        )
        await live.start()
        warnings = UserWarnings(self.dispatcher)
        liq = Liquidator(live, txm, rpc, min_reward=ex.min_reward, fill=ex.batch_fill,
                         max_batches=ex.max_batches_per_block)  # fmt: skip
        log.info("liquidating as %s", signer.address)

        tiers_counted_at = [-10]

        def on_block(head: int) -> None:
            warnings.on_block(live.book)
            # Dashboard gauge: accounts per warning tier (at most every 10 blocks: a pass over the book).
            # Each lane's pending transactions are fed by its TxManager, gas and latency by the
            # TxManager and the Liquidator.
            if live.book is not None and head - tiers_counted_at[0] >= 10:
                tiers_counted_at[0] = head
                METRICS.set_tier_counts(Counter(acct.tier for acct in live.book.accounts.values()))

        await run_loop(
            live, liq, rpc, stop=stop, poll_interval=ex.poll_interval,
            reconcile_every=rk.reconcile_every_blocks, reconcile_accounts=rk.reconcile_accounts,
            on_block=on_block,
        )  # fmt: skip
        await warnings.drain()

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    async def _closing(coro: Awaitable[Any], close: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await coro
        finally:
            await close()

    def _start(self, name: str, coro: Awaitable[Any]) -> None:
        self.tasks[name] = asyncio.ensure_future(coro)

    async def _supervise(self, stop: asyncio.Event) -> None:
        """Waits for the stop signal; a part that fails stops the node with its error (fail fast:
        a keeper that silently stopped liquidating is worse than one that exits and is restarted)."""
        waiter = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                done, _ = await asyncio.wait(
                    [waiter, *self.tasks.values()], return_when=asyncio.FIRST_COMPLETED
                )
                for name, task in self.tasks.items():
                    if task in done and not stop.is_set():
                        exc = task.exception()
                        if exc is not None:
                            raise exc
                        raise KeeperError(f"the {name} loop stopped unexpectedly")
        finally:
            waiter.cancel()


class PageServerProcess:
    """The public page server (``keeper serve`` without the publisher) in its own child process.

    The page shares no event loop with the indexer and liquidator, so page load cannot delay a
    liquidation; the publisher stays in this process (it writes), and so do the metrics (the registry
    is this process's). The child is started with the "spawn" context (a fresh interpreter: nothing of
    this process's loop, threads or connections is inherited), gets SIGTERM on shutdown (SIGKILL after
    10 s), and exits by itself if this process dies (it polls ``os.getppid()``). A child that dies
    while the node runs fails the node (fail fast, like the other parts: the supervisor restarts the
    whole keeper), with its exit code in the error.
    """

    def __init__(self, settings: Any, host: str, port: int) -> None:
        self.settings, self.host, self.port = settings, host, port
        self.proc: Any = None

    async def start(self, timeout: float = 60.0) -> None:
        import multiprocessing
        import os

        from keeper.publisher.service import serve_child

        ctx = multiprocessing.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(
            target=serve_child, name="keeper-page",
            args=(self.settings, self.host, self.port, os.getpid(), send), daemon=True,
        )  # fmt: skip
        self.proc.start()
        send.close()
        try:
            ok = await asyncio.to_thread(recv.poll, timeout)
            try:
                msg = recv.recv() if ok else f"not listening after {timeout:g} s"
            except EOFError:
                msg = f"the page server process exited (code {self.proc.exitcode})"
        finally:
            recv.close()
        if msg is not None:
            await self.stop()
            raise KeeperError(str(msg))
        log.info("page server process %d serving http://%s:%d/", self.proc.pid, self.host, self.port)

    async def watch(self, stop: asyncio.Event, failure: list[BaseException]) -> None:
        """Sets ``stop`` (with the error in ``failure``) if the child dies while the node runs."""
        while not stop.is_set():
            if not self.proc.is_alive():
                exc = KeeperError(f"the page server process exited unexpectedly (code {self.proc.exitcode})")
                log.error("%s", exc)
                failure.append(exc)
                stop.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def stop(self, timeout: float = 10.0) -> None:
        p = self.proc
        if p is None or p.exitcode is not None:
            return
        p.terminate()  # SIGTERM: the child cleans up its runners and exits
        await asyncio.to_thread(p.join, timeout)
        if p.exitcode is None:
            log.warning("the page server process did not stop in %g s: killing it", timeout)
            p.kill()
            await asyncio.to_thread(p.join, 5)


def run(settings: Any, parts: Parts | None = None) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await KeeperNode(settings, parts or Parts()).run(stop)

    asyncio.run(main())
    log.info("keeper stopped")
    return 0
