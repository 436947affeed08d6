"""Latency from the oracle update that made an account liquidatable to our liquidation mined.

Definition (what ``keeper_liquidation_latency_{blocks,seconds}`` measure): the *trigger block* is the
first head at which the keeper's book — whose marks are read at every head — saw the account
liquidatable, i.e. the block of the oracle refresh that pushed it under (or of the trade/funding that
did, which is rarer); the latency ends at the block that mined our liquidation of it. Blocks are
``mined - trigger``; seconds are the difference of the two blocks' timestamps (chain time: on a dev
chain whose time is warped, warped seconds). An account that stops being liquidatable (it recovered,
or someone else liquidated it) is forgotten, so a later episode starts its own clock; one still
liquidatable after a partial liquidation keeps its first trigger block.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from keeper.observability.metrics import METRICS, KeeperMetrics

log = logging.getLogger("keeper.observability.latency")

__all__ = ["LiquidationLatency"]


class LiquidationLatency:
    """Tracks trigger blocks per account and observes the histograms when a liquidation is mined."""

    def __init__(self, metrics: KeeperMetrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else METRICS
        #: account -> trigger block (first head seen liquidatable in the current episode)
        self.since: dict[str, int] = {}
        #: (trigger block, mined block) waiting for their timestamps
        self.pending: list[tuple[int, int]] = []

    def seen(self, head: int, accounts: Iterable[str]) -> None:
        """The accounts liquidatable at ``head`` (all of them, in flight or not)."""
        self.since = {a.lower(): self.since.get(a.lower(), head) for a in accounts}

    def mined(self, account: str, block: int) -> None:
        """Our liquidation of ``account`` was mined at ``block``."""
        trigger = self.since.get(account.lower())
        if trigger is None or block < trigger:
            return  # not seen liquidatable by this process (e.g. recovered from the journal)
        self.pending.append((trigger, block))

    async def flush(self, rpc: Any) -> list[tuple[int, float]]:
        """Reads the pending blocks' timestamps (one batch), then :meth:`observe`."""
        if not self.pending:
            return []
        numbers = sorted({b for pair in self.pending for b in pair})
        try:
            got = await rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
        except Exception as exc:  # noqa: BLE001 - a metric must never stop the liquidator
            log.warning("liquidation latency: cannot read block timestamps: %s", exc)
            got = [None] * len(numbers)
        return self.observe(
            {n: int(b["timestamp"], 16) for n, b in zip(numbers, got, strict=True) if isinstance(b, dict)}
        )

    def observe(self, timestamps: dict[int, int]) -> list[tuple[int, float]]:
        """Observes every pending latency given the blocks' ``timestamps``; returns them as (blocks,
        seconds), seconds NaN (and not observed) where a timestamp is missing."""
        pending, self.pending = self.pending, []
        out = []
        for trigger, block in pending:
            self.metrics.liquidation_latency_blocks.observe(block - trigger)
            seconds = math.nan
            if trigger in timestamps and block in timestamps:
                seconds = float(timestamps[block] - timestamps[trigger])
                self.metrics.liquidation_latency_seconds.observe(seconds)
            out.append((block - trigger, seconds))
        return out
