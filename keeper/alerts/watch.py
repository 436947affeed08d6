"""What ``keeper run`` feeds the :class:`~keeper.alerts.dispatcher.AlertDispatcher` with.

* :class:`UserWarnings` — after each block's book update, the accounts whose warning tier changed (a
  vectorized diff of the book's tier column against the last tiers seen) go to
  ``AlertDispatcher.tier_changed``; the dispatcher decides who is told what (once per crossing). The
  first pass only seeds the dispatcher's tracker: accounts already past a line when the keeper starts
  are not re-notified.
* :class:`OperatorWatch` — every ``watch.check_interval`` seconds: the latest head's timestamp (for
  ``keeper_head_age_seconds``, computed at scrape time), the index lag (chain head minus the
  checkpoint) beyond ``watch.max_index_lag_blocks`` for ``watch.index_lag_grace_seconds``, and the
  liquidation key's native balance below ``watch.min_keeper_balance_eth``; each alert is resolved when
  the condition clears.

The untrusted-oracle alerts come from :class:`keeper.risk.live.LiveBook` (its ``alerts`` hook), the
fund-shortfall alerts from :class:`keeper.executor.fundwatch.FundWatch`, the anomaly alerts from
:class:`keeper.risk.anomaly.AnomalyWatch` — all through the same dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from keeper.alerts.dispatcher import AlertKind, OperatorAlert, Severity
from keeper.observability.metrics import METRICS, KeeperMetrics
from keeper.risk import math as rm
from keeper.store.models import CHECKPOINTS

log = logging.getLogger("keeper.alerts.watch")


def tier_changes(book: Any, previous: dict[str, int]) -> dict[str, int]:
    """Accounts whose tier differs from ``previous`` (address → tier, non-healthy only) → new tier.
    ``previous`` is updated in place."""
    n = len(book._addr)
    col = book.col_tier[:n]
    idx = np.nonzero(col)[0]
    current = {book._addr[i]: int(col[i]) for i in idx.tolist()}
    changed = {a: t for a, t in current.items() if previous.get(a) != t}
    changed.update({a: 0 for a in previous if a not in current})
    previous.clear()
    previous.update(current)
    return changed


@dataclass
class UserWarnings:
    dispatcher: Any
    seen: dict[str, int] = field(default_factory=dict)
    seeded: bool = False
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def on_block(self, book: Any) -> list[tuple[str, rm.WarningTier, int | None]]:
        """Diffs the book's tiers; schedules the dispatcher's deliveries; returns the changes fed."""
        if book is None:
            return []
        changed = tier_changes(book, self.seen)
        if not self.seeded:
            self.seeded = True
            for a, t in changed.items():
                self.dispatcher.tracker.seed(a, rm.WarningTier(t))
            return []
        fed = []
        for a, t in changed.items():
            ratio: int | None = None
            if a in book.accounts and book.accounts[a].positions:
                with contextlib.suppress(KeyError, ZeroDivisionError):
                    ratio = book.risk(a).margin_ratio_bps
            fed.append((a, rm.WarningTier(t), ratio))
        if fed:
            task = asyncio.get_running_loop().create_task(self._feed(fed))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return fed

    async def _feed(self, fed: list[tuple[str, rm.WarningTier, int | None]]) -> None:
        for a, t, ratio in fed:
            try:
                await self.dispatcher.tier_changed(a, t, ratio_bps=ratio)
            except Exception as exc:  # noqa: BLE001 - a user's endpoint failing must not stop the keeper
                log.warning("user warning for %s failed: %s", a, exc)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class OperatorWatch:
    """Index lag and keeper balance (see the module docstring)."""

    rpc: Any
    engine: Engine
    chain_id: int
    settings: Any  # keeper.config.OperatorAlertSettings
    dispatcher: Any
    #: The liquidation key's address, once known (set by the liquidation part).
    address: Callable[[], str | None] = lambda: None
    metrics: KeeperMetrics = field(default_factory=lambda: METRICS)
    clock: Callable[[], float] = time.monotonic
    _lag_since: float | None = None
    lag_alerted: bool = False
    balance_alerted: bool = False

    def _checkpoint(self) -> int | None:
        with self.engine.connect() as conn:
            r = conn.execute(
                select(CHECKPOINTS.c.block_number).where(CHECKPOINTS.c.chain_id == self.chain_id)
            ).first()
        return int(r[0]) if r else None

    async def check_lag(self) -> int | None:
        s = self.settings
        latest = await self.rpc.call("eth_getBlockByNumber", ["latest", False])
        head = int(latest["number"], 16)
        self.metrics.observe_head(int(latest["timestamp"], 16))
        cp = await asyncio.to_thread(self._checkpoint)
        lag = head - (cp if cp is not None else -1)
        now = self.clock()
        if s.max_index_lag_blocks <= 0:
            return lag
        if lag > s.max_index_lag_blocks:
            if self._lag_since is None:
                self._lag_since = now
            if not self.lag_alerted and now - self._lag_since >= s.index_lag_grace_seconds:
                self.lag_alerted = True
                await self.dispatcher.alert(
                    OperatorAlert(
                        AlertKind.INDEX_LAG,
                        f"the index is {lag} blocks behind the chain head (bound {s.max_index_lag_blocks}): "
                        "the book, the page and the liquidations work on old positions",
                        severity=Severity.CRITICAL,
                    )
                )
        else:
            self._lag_since = None
            if self.lag_alerted:
                self.lag_alerted = False
                await self.dispatcher.resolve(AlertKind.INDEX_LAG)
        return lag

    async def check_balance(self) -> int | None:
        s = self.settings
        addr = self.address()
        if addr is None or s.min_keeper_balance_eth <= 0:
            return None
        wei = int(await self.rpc.call("eth_getBalance", [addr, "latest"]), 16)
        self.metrics.balance.set(wei)
        bound = int(s.min_keeper_balance_eth * 10**18)
        if wei < bound:
            if not self.balance_alerted:
                self.balance_alerted = True
                await self.dispatcher.alert(
                    OperatorAlert(
                        AlertKind.KEEPER_BALANCE_LOW,
                        f"the liquidation key {addr} holds {wei / 1e18:.6f} ETH, below "
                        f"{s.min_keeper_balance_eth:g} ETH: top it up or liquidations will stop",
                        severity=Severity.CRITICAL,
                    )
                )
        elif self.balance_alerted:
            self.balance_alerted = False
            await self.dispatcher.resolve(AlertKind.KEEPER_BALANCE_LOW)
        return wei

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for check in (self.check_lag, self.check_balance):
                try:
                    await check()
                except Exception as exc:  # noqa: BLE001 - RPC or database briefly unavailable
                    log.warning("operator watch (%s): %s", check.__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.check_interval)
