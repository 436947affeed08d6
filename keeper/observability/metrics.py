"""The keeper's Prometheus metrics, defined once in a dedicated registry, all named ``keeper_*``.

Use the process-wide :data:`METRICS` (tests may build their own :class:`KeeperMetrics`). Units follow
Prometheus conventions: seconds, blocks, wei; the fund balance is in USD (collateral units / 1e6).
:func:`metrics_app` serves ``/metrics`` from the registry; mount it on an internal address only.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from keeper.errors import KeeperError
from keeper.risk.math import WarningTier

__all__ = [
    "LIQUIDATION_OUTCOMES",
    "METRICS",
    "REORG_DEPTH_BUCKETS",
    "KeeperMetrics",
    "metrics_app",
    "metrics_handler",
    "reorg_depth_bucket",
    "start_metrics",
]

log = logging.getLogger("keeper.server")

LIQUIDATION_OUTCOMES = ("sent", "mined", "failed", "lost_race")
#: (upper bound inclusive, label) — a reorg's depth in blocks, bucketed to keep label cardinality fixed.
REORG_DEPTH_BUCKETS: tuple[tuple[int, str], ...] = (
    (1, "1"),
    (3, "2-3"),
    (7, "4-7"),
    (15, "8-15"),
    (63, "16-63"),
)
REORG_DEPTH_DEEPEST = "64+"

_LATENCY_BLOCK_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55)
_LATENCY_SECOND_BUCKETS = (0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
_LATENESS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600)


def reorg_depth_bucket(depth: int) -> str:
    for bound, label in REORG_DEPTH_BUCKETS:
        if depth <= bound:
            return label
    return REORG_DEPTH_DEEPEST


def tier_label(tier: WarningTier) -> str:
    return tier.name.lower()


class KeeperMetrics:
    """Every keeper metric, registered in ``self.registry`` (not prometheus_client's global one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # --- chain and index
        self.head_age = Gauge(
            "keeper_head_age_seconds",
            "Seconds since the timestamp of the latest chain head seen (NaN before the first head)",
            registry=r,
        )
        self.index_lag = Gauge("keeper_index_lag_blocks", "Chain head minus last indexed block", registry=r)
        self.events_indexed = Counter("keeper_events_indexed", "Events indexed", registry=r)
        self.events_rate = Gauge(
            "keeper_events_indexed_per_second", "Indexing throughput, moving average (events/s)", registry=r
        )
        self.reorgs = Counter(
            "keeper_reorgs", "Chain reorganisations handled, by depth bucket", ["depth"], registry=r
        )
        self.rpc_errors = Counter("keeper_rpc_errors", "RPC errors, by kind", ["kind"], registry=r)
        # --- risk
        self.accounts_by_tier = Gauge(
            "keeper_accounts_by_tier", "Accounts per warning tier", ["tier"], registry=r
        )
        self.untrusted_oracles = Gauge(
            "keeper_oracle_untrusted",
            "1 when the market's oracle is not trusted, else 0",
            ["market"],
            registry=r,
        )
        self.anomaly_flags = Counter(
            "keeper_anomaly_flags", "Anomaly flags raised, by rule", ["rule"], registry=r
        )
        self.reconcile_mismatches = Counter(
            "keeper_book_reconcile_mismatches", "Book vs chain mismatches found by the reconciler", registry=r
        )
        # --- execution
        self.liquidations = Counter(
            "keeper_liquidations", "Liquidation transactions, by outcome", ["outcome"], registry=r
        )
        self.liquidation_latency_blocks = Histogram(
            "keeper_liquidation_latency_blocks",
            "Blocks from the oracle update making an account liquidatable to the liquidation mined",
            buckets=_LATENCY_BLOCK_BUCKETS,
            registry=r,
        )
        self.liquidation_latency_seconds = Histogram(
            "keeper_liquidation_latency_seconds",
            "Seconds from the oracle update making an account liquidatable to the liquidation mined",
            buckets=_LATENCY_SECOND_BUCKETS,
            registry=r,
        )
        self.pending_transactions = Gauge(
            "keeper_pending_transactions",
            "Transactions sent and not yet mined, by lane",
            ["lane"],
            registry=r,
        )
        self.gas_spent = Counter(
            "keeper_gas_spent_wei",
            "Gas fees paid by the keeper's mined transactions (gasUsed x effectiveGasPrice, wei), by lane",
            ["lane"],
            registry=r,
        )
        self.balance = Gauge("keeper_balance_wei", "The keeper account's native balance (wei)", registry=r)
        self.funding_lateness = Histogram(
            "keeper_funding_lateness_seconds",
            "How late a funding settlement was relative to its schedule",
            buckets=_LATENESS_BUCKETS,
            registry=r,
        )
        # --- insurance fund
        self.fund_balance = Gauge("keeper_fund_balance_usd", "Insurance fund balance (USD)", registry=r)
        self.fund_coverage = Gauge(
            "keeper_fund_coverage_ratio", "Insurance fund balance / required coverage", registry=r
        )

        for tier in WarningTier:
            self.accounts_by_tier.labels(tier=tier_label(tier)).set(0)
        for outcome in LIQUIDATION_OUTCOMES:
            self.liquidations.labels(outcome=outcome)
        self._rate_last: float | None = None
        self._rate_pending = 0
        self._rate_value: float | None = None
        self._head_timestamp: int | None = None
        # Computed at scrape time: the age keeps growing while no new head arrives (a stalled chain
        # or RPC shows as a rising line, not as the last value set).
        self.head_age.set_function(self._head_age)

    # ---- helpers for the callers

    def _head_age(self, now: float | None = None) -> float:
        if self._head_timestamp is None:
            return math.nan
        return (time.time() if now is None else now) - self._head_timestamp

    def observe_head(self, timestamp: int) -> None:
        """The latest chain head's timestamp (unix seconds). Negative ages are kept: a head ahead of
        this machine's clock means clock skew (or a dev chain's warped time), worth seeing."""
        self._head_timestamp = timestamp

    def record_gas(self, lane: str, wei: int) -> None:
        """Fees paid by one mined transaction of ``lane`` (reverted ones pay too)."""
        if wei > 0:
            self.gas_spent.labels(lane=lane).inc(wei)

    def record_events(self, count: int, now: float | None = None, *, half_life: float = 10.0) -> None:
        """Counts ``count`` indexed events and updates the events/s moving average."""
        now = time.monotonic() if now is None else now
        self.events_indexed.inc(count)
        if self._rate_last is None:
            self._rate_last = now  # the first batch only starts the clock
            return
        self._rate_pending += count
        dt = now - self._rate_last
        if dt < 0.5:
            return  # accumulate: instantaneous rates over tiny intervals are noise
        instant = self._rate_pending / dt
        alpha = 1.0 - 0.5 ** (dt / half_life)
        current = self._rate_value
        self._rate_value = instant if current is None else current + alpha * (instant - current)
        self.events_rate.set(self._rate_value)
        self._rate_last, self._rate_pending = now, 0

    def set_tier_counts(self, counts: dict[WarningTier, int]) -> None:
        for tier in WarningTier:
            self.accounts_by_tier.labels(tier=tier_label(tier)).set(counts.get(tier, 0))

    def record_reorg(self, depth: int) -> None:
        self.reorgs.labels(depth=reorg_depth_bucket(depth)).inc()

    def record_liquidation(self, outcome: str) -> None:
        if outcome not in LIQUIDATION_OUTCOMES:
            raise ValueError(f"unknown liquidation outcome {outcome!r}")
        self.liquidations.labels(outcome=outcome).inc()

    def observe_liquidation_latency(self, blocks: int, seconds: float) -> None:
        self.liquidation_latency_blocks.observe(blocks)
        self.liquidation_latency_seconds.observe(seconds)

    def set_oracle_trust(self, market: str | int, trusted: bool) -> None:
        self.untrusted_oracles.labels(market=str(market)).set(0 if trusted else 1)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


#: The process-wide metrics.
METRICS = KeeperMetrics()


def metrics_handler(
    registry: CollectorRegistry | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler rendering ``registry`` (default: :data:`METRICS`) in the text format."""
    reg = registry if registry is not None else METRICS.registry

    async def handle(_request: web.Request) -> web.StreamResponse:
        body = generate_latest(reg)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle


def metrics_app(registry: CollectorRegistry | None = None, path: str = "/metrics") -> web.Application:
    """A tiny aiohttp app serving ``path`` (mount it, or run it, on an internal address)."""
    app = web.Application()
    app.router.add_get(path, metrics_handler(registry))
    return app


async def start_metrics(settings: Any) -> list[web.AppRunner]:
    """Serves :data:`METRICS` on ``metrics.host:metrics.port`` + ``metrics.path`` when ``metrics.enabled``;
    returns the runner to clean up (none when disabled). A port in use or an address that cannot be bound
    raises :class:`KeeperError` ("cannot listen on host:port: reason"), the CLI's one error line.

    Used by ``keeper run``, ``keeper serve`` and ``keeper index``."""
    m = settings.metrics
    if not m.enabled:
        return []
    runner = web.AppRunner(metrics_app(path=m.path), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, m.host, m.port).start()
    except OSError as exc:
        await runner.cleanup()
        # asyncio's text repeats the address ("error while attempting to bind on address ..."): the
        # errno's reads better; a name that does not resolve (gaierror) keeps its own text
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
        raise KeeperError(f"cannot listen on {m.host}:{m.port}: {reason}") from None
    log.info("metrics on http://%s:%d%s", m.host, m.port, m.path)
    return [runner]
