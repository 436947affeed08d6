"""Anomaly watch (system layer): rule-based flags over the index. Flagged, alerted, shown — never acted on.

Four rules, each a pure function of rows read from the indexer's tables (unit-tested without I/O):

* ``oi_share`` — one account took more than ``oi_share_bps`` of a market's open interest (both sides,
  base units) within the window: the sum of the increases of its ``|size|`` over the window's trades,
  against the market's current open interest (only when the market's open interest is worth at least
  ``oi_min_usd`` at its mark, so that the first trades of an empty market are not flagged);
* ``open_close_loop`` — an account opened or closed a position in one market ``loop_min_count`` times or
  more within the window (an open: size from 0; a close: size to 0; a flip counts as both);
* ``funding_source`` — ``funding_min_accounts`` or more accounts whose first deposit came from one and the
  same third-party address (``Deposited.from`` ≠ account, e.g. ``depositFor``) within the window;
* ``oracle_jump`` — a market's latest mark return (between consecutive ``PriceRefreshed``) exceeds
  ``oracle_sigma`` × the standard deviation of the previous ``oracle_samples`` returns, and at least
  ``oracle_min_move_bps`` (a flat history would otherwise flag any move).

:class:`AnomalyWatch` runs them each time the index checkpoint moves, stores new flags in
``anomaly_flags`` (unique per rule, subject and triggering block; a subject already flagged by the
same rule within the window is not flagged again), counts them in ``keeper_anomaly_flags{rule}`` and
sends one ``anomaly`` operator alert per flag. The keeper takes no action on a flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, Column, Engine, Index, UniqueConstraint, func, insert, select
from sqlmodel import Field, SQLModel

from keeper.observability.metrics import METRICS, KeeperMetrics
from keeper.store.models import (
    ADDRESS,
    BLOCKS,
    CHECKPOINTS,
    EVENTS,
    ID,
    MARKETS,
    ORACLE_PRICES,
    POSITION_CHANGES,
    table_of,
)
from keeper.store.types import JsonDoc

log = logging.getLogger("keeper.risk.anomaly")

RULES = ("oi_share", "open_close_loop", "funding_source", "oracle_jump")
BPS = 10_000
WAD = 10**18
USD = 10**6


class AnomalyFlagRow(SQLModel, table=True):
    """One anomaly flag (migration 0005)."""

    __tablename__ = "anomaly_flags"
    __table_args__ = (
        UniqueConstraint("chain_id", "rule", "subject", "block_number", name="uq_anomaly_flags_key"),
        Index("ix_anomaly_flags_block", "chain_id", "block_number"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=ID)
    chain_id: int = Field(sa_type=BigInteger)
    rule: str = Field(max_length=32)
    #: What is flagged: ``account:market`` / ``account`` / ``source`` / ``market`` (see the rules).
    subject: str = Field(max_length=128)
    account: str | None = Field(default=None, max_length=ADDRESS)
    market_id: int | None = Field(default=None, sa_type=BigInteger)
    block_number: int = Field(sa_type=BigInteger)
    detail: dict[str, Any] = Field(sa_column=Column(JsonDoc, nullable=False))
    #: Wall-clock time the flag was raised (unix seconds).
    created: float


ANOMALY_FLAGS = table_of(AnomalyFlagRow)


# ----------------------------------------------------------------------------- inputs and outputs


@dataclass(frozen=True)
class Trade:
    """A position change (from ``position_changes``)."""

    account: str
    market: int
    block: int
    size_delta: int
    size_after: int
    reason: int = 0  # 0 trade, 1 liquidation, 2 deleverage
    timestamp: int | None = None

    @property
    def size_before(self) -> int:
        return self.size_after - self.size_delta


@dataclass(frozen=True)
class Deposit:
    account: str
    source: str
    block: int
    first: bool  # the account's first deposit ever
    timestamp: int | None = None


@dataclass(frozen=True)
class Price:
    market: int
    block: int
    price: int
    timestamp: int | None = None


@dataclass(frozen=True)
class MarketOI:
    market: int
    long_size: int
    short_size: int
    mark: int | None

    @property
    def total(self) -> int:
        return abs(self.long_size) + abs(self.short_size)


@dataclass(frozen=True)
class Flag:
    rule: str
    subject: str
    block: int
    detail: dict[str, Any]
    account: str | None = None
    market: int | None = None

    def text(self, symbols: dict[int, str] | None = None) -> str:
        sym = (symbols or {}).get(self.market, str(self.market)) if self.market is not None else None
        d = self.detail
        if self.rule == "oi_share":
            return (
                f"account {self.account} took {d['share_bps'] / 100:.1f}% of market {sym}'s open interest "
                f"within {d['window_blocks']} blocks (up to block {self.block})"
            )
        if self.rule == "open_close_loop":
            return (
                f"account {self.account} opened/closed market {sym} {d['count']} times "
                f"within {d['window_blocks']} blocks (up to block {self.block})"
            )
        if self.rule == "funding_source":
            return (
                f"{d['accounts']} new accounts first funded by {self.subject} "
                f"within {d['window_blocks']} blocks (up to block {self.block})"
            )
        return (
            f"market {sym}: oracle moved {d['return_bps'] / 100:+.2f}% at block {self.block}, "
            f"{d['sigmas']:.1f}× its recent volatility ({d['stdev_bps'] / 100:.2f}%)"
        )


@dataclass(frozen=True)
class Window:
    """Rows within ``blocks`` blocks (and, when set, ``seconds`` of block time) of the head count."""

    blocks: int
    seconds: int | None = None

    def lowest_block(self, head: int) -> int:
        return head - self.blocks + 1

    def contains(self, block: int, ts: int | None, head: int, head_ts: int | None) -> bool:
        if block < self.lowest_block(head) or block > head:
            return False
        if self.seconds is not None and ts is not None and head_ts is not None:
            return head_ts - ts <= self.seconds
        return True


# ----------------------------------------------------------------------------- the rules (pure)


def oi_share(
    trades: Iterable[Trade],
    markets: dict[int, MarketOI],
    head: int,
    window: Window,
    *,
    share_bps: int,
    min_oi_usd: int = 0,
    head_ts: int | None = None,
) -> list[Flag]:
    """Accounts whose |size| increases within the window exceed ``share_bps`` of the market's OI."""
    taken: dict[tuple[str, int], int] = defaultdict(int)
    last: dict[tuple[str, int], int] = {}
    for t in trades:
        if t.reason != 0 or not window.contains(t.block, t.timestamp, head, head_ts):
            continue
        grown = abs(t.size_after) - abs(t.size_before)
        if t.size_before and t.size_after and (t.size_before > 0) != (t.size_after > 0):
            grown = abs(t.size_after)  # a flip: the new side is all new
        if grown > 0:
            key = (t.account.lower(), t.market)
            taken[key] += grown
            last[key] = max(last.get(key, 0), t.block)
    out = []
    for (acct, m), size in sorted(taken.items()):
        oi = markets.get(m)
        if oi is None or oi.total <= 0:
            continue
        if min_oi_usd and (oi.mark is None or oi.total * oi.mark // WAD // WAD < min_oi_usd):
            continue
        share = size * BPS // oi.total
        if share > share_bps:
            out.append(
                Flag("oi_share", f"{acct}:{m}", last[(acct, m)],
                     {"share_bps": share, "taken": str(size), "open_interest": str(oi.total),
                      "threshold_bps": share_bps, "window_blocks": window.blocks},
                     account=acct, market=m)
            )  # fmt: skip
    return out


def open_close_loops(
    trades: Iterable[Trade], head: int, window: Window, *, min_count: int, head_ts: int | None = None
) -> list[Flag]:
    """Accounts that opened or closed one market ``min_count`` times or more within the window."""
    count: dict[tuple[str, int], int] = defaultdict(int)
    last: dict[tuple[str, int], int] = {}
    for t in trades:
        if t.reason != 0 or not window.contains(t.block, t.timestamp, head, head_ts):
            continue
        before, after = t.size_before, t.size_after
        n = 0
        if before == 0 and after != 0:
            n = 1  # open
        elif before != 0 and after == 0:
            n = 1  # close
        elif before and after and (before > 0) != (after > 0):
            n = 2  # flip: a close and an open
        if n:
            key = (t.account.lower(), t.market)
            count[key] += n
            last[key] = max(last.get(key, 0), t.block)
    return [
        Flag("open_close_loop", f"{a}:{m}", last[(a, m)],
             {"count": c, "threshold": min_count, "window_blocks": window.blocks}, account=a, market=m)
        for (a, m), c in sorted(count.items())
        if c >= min_count
    ]  # fmt: skip


def funding_sources(
    deposits: Iterable[Deposit], head: int, window: Window, *, min_accounts: int, head_ts: int | None = None
) -> list[Flag]:
    """Third-party addresses that made the first deposit of ``min_accounts`` accounts within the window."""
    funded: dict[str, set[str]] = defaultdict(set)
    last: dict[str, int] = {}
    for d in deposits:
        src, acct = d.source.lower(), d.account.lower()
        if not d.first or src == acct or not window.contains(d.block, d.timestamp, head, head_ts):
            continue
        funded[src].add(acct)
        last[src] = max(last.get(src, 0), d.block)
    return [
        Flag("funding_source", src, last[src],
             {"accounts": len(accts), "funded": sorted(accts)[:50], "threshold": min_accounts,
              "window_blocks": window.blocks})
        for src, accts in sorted(funded.items())
        if len(accts) >= min_accounts
    ]  # fmt: skip


def _returns(prices: Sequence[Price]) -> list[float]:
    return [(b.price - a.price) / a.price for a, b in zip(prices, prices[1:], strict=False) if a.price > 0]


def oracle_jumps(
    prices: Iterable[Price],
    *,
    sigma: float,
    samples: int,
    min_samples: int = 5,
    min_move_bps: int = 0,
    since_block: int = -1,
) -> list[Flag]:
    """Per market, the returns at blocks above ``since_block`` (default: only the latest) beyond
    ``sigma`` × the sample stdev of the ``samples`` returns before each (and ≥ ``min_move_bps``)."""
    by_market: dict[int, list[Price]] = defaultdict(list)
    for p in prices:
        by_market[p.market].append(p)
    out = []
    for m, series in sorted(by_market.items()):
        series.sort(key=lambda p: p.block)
        rets = _returns(series)
        idxs = [len(rets) - 1] if since_block < 0 else [
            i for i in range(len(rets)) if series[i + 1].block > since_block
        ]  # fmt: skip
        for i in idxs:
            if i < 0:
                continue
            last, history = rets[i], rets[max(0, i - samples) : i]
            if len(history) < max(min_samples, 2):
                continue
            mean = sum(history) / len(history)
            stdev = math.sqrt(sum((r - mean) ** 2 for r in history) / (len(history) - 1))
            if abs(last) * BPS < min_move_bps or (stdev > 0 and abs(last) <= sigma * stdev):
                continue
            sigmas = abs(last) / stdev if stdev > 0 else 1e9
            out.append(
                Flag("oracle_jump", str(m), series[i + 1].block,
                     {"return_bps": round(last * BPS, 1), "stdev_bps": round(stdev * BPS, 2),
                      "sigmas": round(min(sigmas, 1e9), 1), "threshold_sigma": sigma,
                      "samples": len(history), "price": str(series[i + 1].price),
                      "previous": str(series[i].price)},
                     market=m)
            )  # fmt: skip
    return out


def new_flags(
    flags: Iterable[Flag], recent: dict[tuple[str, str], int], windows: dict[str, int]
) -> list[Flag]:
    """Flags not already raised: a (rule, subject) flagged at a block within the rule's window (or at the
    same block) is not flagged again. ``recent``: (rule, subject) → block of its latest stored flag."""
    out = []
    for f in flags:
        prev = recent.get((f.rule, f.subject))
        if prev is not None and (f.block <= prev or f.block - prev < windows.get(f.rule, 0)):
            continue
        out.append(f)
    return out


# ----------------------------------------------------------------------------- the service


@dataclass
class AnomalyWatch:
    """Evaluates the rules each time the index checkpoint moves; stores, counts and alerts new flags."""

    engine: Engine
    chain_id: int
    settings: Any  # keeper.config.AnomalySettings
    dispatcher: Any = None  # keeper.alerts.dispatcher.AlertDispatcher
    metrics: KeeperMetrics = field(default_factory=lambda: METRICS)
    symbols: dict[int, str] = field(default_factory=dict)
    last_block: int = -1
    raised: list[Flag] = field(default_factory=list)

    @property
    def windows(self) -> dict[str, int]:
        s = self.settings
        return {"oi_share": s.oi_window_blocks, "open_close_loop": s.loop_window_blocks,
                "funding_source": s.funding_window_blocks, "oracle_jump": 1}  # fmt: skip

    def _window(self, blocks: int) -> Window:
        return Window(blocks, self.settings.window_seconds)

    def _head(self, conn: Any) -> int | None:
        r = conn.execute(
            select(CHECKPOINTS.c.block_number).where(CHECKPOINTS.c.chain_id == self.chain_id)
        ).first()
        return int(r[0]) if r else None

    def evaluate(self) -> list[Flag]:
        """Runs every rule at the current checkpoint; stores and returns the new flags (synchronous)."""
        s = self.settings
        with self.engine.connect() as conn:
            head = self._head(conn)
            if head is None or head == self.last_block:
                return []
            head_ts = conn.execute(
                select(BLOCKS.c.timestamp).where(BLOCKS.c.chain_id == self.chain_id, BLOCKS.c.number == head)
            ).scalar()
            flags: list[Flag] = []
            span = max(s.oi_window_blocks, s.loop_window_blocks)
            pc = POSITION_CHANGES.c
            trades = [
                Trade(r.account.lower(), int(r.market_id), int(r.block_number), int(r.size_delta),
                      int(r.size_after), int(r.reason), r.block_timestamp)
                for r in conn.execute(
                    select(pc.account, pc.market_id, pc.block_number, pc.size_delta, pc.size_after, pc.reason,
                           pc.block_timestamp)
                    .where(pc.chain_id == self.chain_id, pc.block_number > head - span,
                           pc.block_number <= head)
                )
            ]  # fmt: skip
            mk = MARKETS.c
            markets = {
                int(r.market_id): MarketOI(int(r.market_id), int(r.long_size), int(r.short_size),
                                           None if r.mark_price is None else int(r.mark_price))
                for r in conn.execute(
                    select(mk.market_id, mk.long_size, mk.short_size, mk.mark_price, mk.symbol).where(
                        mk.chain_id == self.chain_id
                    )
                )
            }  # fmt: skip
            for r in conn.execute(select(mk.market_id, mk.symbol).where(mk.chain_id == self.chain_id)):
                if r.symbol:
                    self.symbols[int(r.market_id)] = r.symbol
            if s.oi_share_bps > 0:
                flags += oi_share(trades, markets, head, self._window(s.oi_window_blocks),
                                  share_bps=s.oi_share_bps, min_oi_usd=s.oi_min_usd,
                                  head_ts=head_ts)  # fmt: skip
            if s.loop_min_count > 0:
                flags += open_close_loops(trades, head, self._window(s.loop_window_blocks),
                                          min_count=s.loop_min_count, head_ts=head_ts)  # fmt: skip
            if s.funding_min_accounts > 0:
                flags += funding_sources(self._deposits(conn, head, s.funding_window_blocks), head,
                                         self._window(s.funding_window_blocks),
                                         min_accounts=s.funding_min_accounts, head_ts=head_ts)  # fmt: skip
            if s.oracle_sigma > 0:
                flags += self._oracle(conn, head)
            recent = self._recent(conn, head)
        fresh = new_flags(flags, recent, self.windows)
        if fresh:
            self._store(fresh)
        self.last_block = head
        return fresh

    def _deposits(self, conn: Any, head: int, window: int) -> list[Deposit]:
        ev = EVENTS.c
        rows = conn.execute(
            select(ev.account, ev.args, ev.block_number, ev.block_timestamp).where(
                ev.chain_id == self.chain_id, ev.event_name == "Deposited",
                ev.block_number > head - window, ev.block_number <= head,
            )
        ).all()  # fmt: skip
        accounts = sorted({str(r.account).lower() for r in rows if r.account})
        earlier: set[str] = set()
        for i in range(0, len(accounts), 500):
            part = accounts[i : i + 500]
            cands = {a for a in part} | {_checksum(a) for a in part}
            earlier |= {
                str(a).lower()
                for (a,) in conn.execute(
                    select(ev.account).where(
                        ev.chain_id == self.chain_id, ev.event_name == "Deposited",
                        ev.block_number <= head - window, ev.account.in_(cands),
                    ).distinct()
                )
            }  # fmt: skip
        seen: set[str] = set()
        out = []
        for r in sorted(rows, key=lambda r: int(r.block_number)):
            acct = str(r.account or r.args.get("account", "")).lower()
            src = str(r.args.get("from", "")).lower()
            first = acct not in earlier and acct not in seen
            seen.add(acct)
            out.append(Deposit(acct, src, int(r.block_number), first, r.block_timestamp))
        return out

    def _oracle(self, conn: Any, head: int) -> list[Flag]:
        s = self.settings
        op = ORACLE_PRICES.c
        prices: list[Price] = []
        # never below 0: oracle_jumps reads a negative since_block as "the latest return only", which
        # on a young chain would skip every move made before the first pass
        since = max(self.last_block, head - s.oracle_max_blocks_per_pass, 0)
        for m in conn.execute(
            select(op.market_id)
            .where(op.chain_id == self.chain_id, op.block_number > since, op.block_number <= head)
            .distinct()
        ).scalars():
            new = conn.execute(
                select(func.count(func.distinct(op.block_number))).where(
                    op.chain_id == self.chain_id, op.market_id == m, op.block_number > since,
                    op.block_number <= head,
                )
            ).scalar_one()  # fmt: skip
            # The history is counted in blocks, not rows: a busy block holds one refresh per trade
            # (measured: 60 in one block of the simulator's setup), which a row limit would cut short.
            blocks = (
                conn.execute(
                    select(op.block_number)
                    .where(op.chain_id == self.chain_id, op.market_id == m, op.block_number <= head)
                    .group_by(op.block_number)
                    .order_by(op.block_number.desc())
                    .limit(s.oracle_samples + int(new) + 2)
                )
                .scalars()
                .all()
            )
            rows = conn.execute(
                select(op.block_number, op.mark_price, op.block_timestamp)
                .where(op.chain_id == self.chain_id, op.market_id == m, op.block_number >= min(blocks),
                       op.block_number <= head)
                .order_by(op.block_number.desc(), op.log_index.desc())
            ).all()  # fmt: skip
            by_block: dict[int, Price] = {}
            for b, p, ts in rows:  # one price per block: the block's last refresh
                by_block.setdefault(int(b), Price(int(m), int(b), int(p), ts))
            prices += by_block.values()
        return oracle_jumps(prices, sigma=s.oracle_sigma, samples=s.oracle_samples,
                            min_samples=s.oracle_min_samples, min_move_bps=s.oracle_min_move_bps,
                            since_block=since)  # fmt: skip

    def _recent(self, conn: Any, head: int) -> dict[tuple[str, str], int]:
        af = ANOMALY_FLAGS.c
        lo = head - max(self.windows.values()) - 1
        rows = conn.execute(
            select(af.rule, af.subject, func.max(af.block_number))
            .where(af.chain_id == self.chain_id, af.block_number >= lo)
            .group_by(af.rule, af.subject)
        ).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def _store(self, flags: Sequence[Flag]) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                insert(ANOMALY_FLAGS),
                [
                    {"chain_id": self.chain_id, "rule": f.rule, "subject": f.subject[:128],
                     "account": f.account, "market_id": f.market, "block_number": f.block,
                     "detail": f.detail, "created": now}
                    for f in flags
                ],
            )  # fmt: skip

    async def announce(self, flags: Sequence[Flag]) -> None:
        from keeper.alerts.dispatcher import AlertKind, OperatorAlert, Severity

        alerts: list[OperatorAlert] = []
        warn = Severity.WARNING
        for f in flags:
            self.metrics.anomaly_flags.labels(rule=f.rule).inc()
            self.raised.append(f)
            text = f.text(self.symbols) + " — flagged for review; the keeper takes no action"
            log.warning("anomaly: %s", text)
            if len(alerts) < self.settings.alerts_per_pass:
                subject = f"{f.rule}:{f.subject}@{f.block}"
                alerts.append(OperatorAlert(AlertKind.ANOMALY, text, subject=subject, severity=warn))
        rest = flags[self.settings.alerts_per_pass :]
        if rest:  # one summary instead of a flood (an operator reads the list on the page)
            by_rule = Counter(f.rule for f in rest)
            counts = ", ".join(f"{rule}: {n}" for rule, n in sorted(by_rule.items()))
            last = max(f.block for f in flags)
            alerts.append(OperatorAlert(
                AlertKind.ANOMALY,
                f"{len(rest)} more anomaly flags up to block {last} ({counts}) — listed on /api/anomalies "
                "and the page; flagged for review, the keeper takes no action",
                subject=f"summary@{last}:{len(flags)}", severity=Severity.WARNING,
            ))  # fmt: skip
        if self.dispatcher is None:
            return
        for alert in alerts:
            try:
                await self.dispatcher.alert(alert)
            except Exception as exc:  # noqa: BLE001 - a sink failing must not stop the watch
                log.warning("anomaly alert delivery failed: %s", exc)

    async def run_once(self) -> list[Flag]:
        flags = await asyncio.to_thread(self.evaluate)
        await self.announce(flags)
        return flags

    async def run(self, stop: asyncio.Event) -> None:
        with self.engine.connect() as conn:  # flags raised before a restart stay raised (not re-alerted)
            head = self._head(conn)
        log.info("anomaly watch running from block %s", head)
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # noqa: BLE001 - the database may be briefly unavailable
                log.warning("anomaly watch: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.poll_interval)


def _checksum(address: str) -> str:
    from eth_utils import to_checksum_address

    try:
        return str(to_checksum_address(address))
    except ValueError:
        return address


def recent_flags(conn: Any, chain_id: int, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """(total, page of flags newest first) for the page and /api/anomalies."""
    af = ANOMALY_FLAGS.c
    total = int(
        conn.execute(
            select(func.count()).select_from(ANOMALY_FLAGS).where(af.chain_id == chain_id)
        ).scalar_one()
    )
    rows = (
        conn.execute(
            select(ANOMALY_FLAGS)
            .where(af.chain_id == chain_id)
            .order_by(af.block_number.desc(), af.id.desc())
            .offset(offset)
            .limit(limit)
        )
        .mappings()
        .all()
    )
    return total, [dict(r) for r in rows]
