"""The insurance-fund publisher: chain state read AT ONE BLOCK, written as a stamped snapshot.

For each new head (polled every ``publisher.poll_interval`` <= 2 s; new number, or new hash after a reorg
to a chain of the same height), and at least every ``publisher.max_interval`` (<= 10 s) even when no
block comes, :meth:`Publisher.publish_once`:

1. takes the block N = head − ``lag_blocks`` (default 1, in :meth:`Publisher.run`). Not the head
   itself: a node may answer the head's number while its state is already part-way to the next block
   — anvil does, while mining and during ``anvil_rollback`` (in a loop of mining and rollbacks, 22
   reads at the head returned a later block's balance, none one block behind; the crash-day page once
   showed block 73 stamped with the fund of the rolled-back block 76);
2. sends ONE JSON-RPC batch: ``eth_getBlockByNumber(N)``, every view below as ``eth_call`` with block tag N,
   and ``eth_getBlockByNumber(N)`` again last — if the two hashes differ (a reorg raced the batch), the
   read is retried at the new head;
3. derives total position value (Σ |size|·mark both sides = the markets' ``openInterest`` notionals) and
   coverage = balance / total position value;
4. adds the 24-hour (block time) income split and payouts from the indexer's append-only tables
   (``fund_flows``, ``bad_debts``) up to min(N, the index checkpoint);
5. writes ``fund_snapshots`` + one ``market_snapshots`` row per market in one transaction, then
   downsamples old history (every row for 24 h, then the first of each hour) and, hourly, writes an
   anonymized whale snapshot from the ``positions`` table.

Views read: InsuranceFund.balance/totalFeeIncome/totalPenaltyIncome/totalDonations/totalPayouts;
Exchange.params, tierLimits(0..3), globalOpenInterest, and per market market, marketState,
openInterest, nextFunding, adlState; OracleHub.tryMarkPrice, status, readSource(primary/secondary).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from keeper.chain.deployments import Deployment
from keeper.chain.rpc import RpcClient, RpcError
from keeper.publisher.calls import fn
from keeper.publisher.models import FUND_SNAPSHOTS, MARKET_SNAPSHOTS, WHALE_SNAPSHOTS
from keeper.risk.math import BPS, notional
from keeper.store.engine import for_writes
from keeper.store.models import BAD_DEBTS, CHECKPOINTS, FUND_FLOWS, POSITIONS

log = logging.getLogger("keeper.publisher")

DAY = 86_400
HOUR = 3_600
TIER_NAMES = ("novice", "junior", "senior", "professional")
PARAM_NAMES = (
    "trading_fee_bps", "fund_fee_bps", "liquidation_bps", "target_bps", "penalty_bps",
    "min_remaining_notional", "adl_trigger_bps", "adl_target_bps", "max_funding_rate_wad",
    "funding_period", "account_notional_cap", "global_oi_cap",
)  # fmt: skip
#: Whale size bands (USD notional, collateral units): label, lower bound.
BANDS: tuple[tuple[str, int], ...] = (
    (">=1M", 1_000_000 * 10**6),
    ("100k-1M", 100_000 * 10**6),
    ("50k-100k", 50_000 * 10**6),
    ("10k-50k", 10_000 * 10**6),
    ("<10k", 0),
)

__all__ = ["ChainRead", "Publisher", "downsample", "income_24h", "read_at_block", "size_band", "whale_id"]


class ReorgDuringRead(Exception):
    pass


@dataclass
class MarketRead:
    market_id: int
    symbol: str
    mark_ok: bool
    mark_price: int
    oracle_status: int
    primary_price: int
    primary_reason: int
    secondary_price: int
    secondary_reason: int
    mmr_bps: int
    long_oi_cap: int
    short_oi_cap: int
    long_size: int
    short_size: int
    long_notional: int
    short_notional: int
    funding_index: int
    last_funding_rate: int
    last_funding_period: int
    next_funding_rate: int
    next_funding_due: int
    adl_ok: bool
    adl_trader_pnl: int
    adl_vault_assets: int
    adl_active: bool


@dataclass
class ChainRead:
    chain_id: int
    block_number: int
    block_hash: str
    block_timestamp: int
    balance: int
    total_fee_income: int
    total_penalty_income: int
    total_donations: int
    total_payouts: int
    params: dict[str, int]
    tiers: list[dict[str, Any]]
    global_oi: int
    markets: list[MarketRead] = field(default_factory=list)

    @property
    def total_position_value(self) -> int:
        return sum(m.long_notional + m.short_notional for m in self.markets)

    @property
    def coverage_bps(self) -> int | None:
        tpv = self.total_position_value
        return self.balance * BPS // tpv if tpv > 0 else None

    @property
    def complete(self) -> bool:
        return all(m.mark_ok for m in self.markets)


def _ok(value: Any, what: str) -> Any:
    if isinstance(value, RpcError):
        raise RpcError(value.code, f"{what}: {value.message}", value.data)
    return value


async def read_at_block(rpc: RpcClient, deployment: Deployment, block: int) -> ChainRead:
    """Every figure of a snapshot, read at ``block`` in one JSON-RPC batch (see the module docstring)."""
    ex, fund, oracle = (deployment.address(n) for n in ("Exchange", "InsuranceFund", "OracleHub"))
    markets = sorted(deployment.markets, key=lambda m: m.id)
    tag = hex(block)
    calls: list[tuple[str, Sequence[Any]]] = [("eth_getBlockByNumber", [tag, False])]
    fund_fns = ("balance", "totalFeeIncome", "totalPenaltyIncome", "totalDonations", "totalPayouts")
    calls += [fn("InsuranceFund", f).call(fund, block=block) for f in fund_fns]
    calls.append(fn("Exchange", "params").call(ex, block=block))
    calls += [fn("Exchange", "tierLimits").call(ex, t, block=block) for t in range(4)]
    calls.append(fn("Exchange", "globalOpenInterest").call(ex, block=block))
    per_market = ("market", "marketState", "openInterest", "nextFunding", "adlState")
    for m in markets:
        calls += [fn("Exchange", f).call(ex, m.id, block=block) for f in per_market]
        calls.append(fn("OracleHub", "tryMarkPrice").call(oracle, m.id, block=block))
        calls.append(fn("OracleHub", "status").call(oracle, m.id, block=block))
        calls.append(fn("OracleHub", "readSource").call(oracle, m.id, 0, block=block))
        calls.append(fn("OracleHub", "readSource").call(oracle, m.id, 1, block=block))
    calls.append(("eth_getBlockByNumber", [tag, False]))
    res = await rpc.batch(calls)
    head, tail = _ok(res[0], "eth_getBlockByNumber"), _ok(res[-1], "eth_getBlockByNumber")
    if head is None or tail is None:
        raise ReorgDuringRead(f"block {block} not found")
    if head["hash"] != tail["hash"]:
        raise ReorgDuringRead(f"block {block} changed during the read")
    it = iter(res[1:-1])

    def nxt(contract: str, name: str) -> tuple[Any, ...]:
        return fn(contract, name).decode(_ok(next(it), f"{contract}.{name}"))

    f = [nxt("InsuranceFund", n)[0] for n in fund_fns]
    params = dict(zip(PARAM_NAMES, nxt("Exchange", "params"), strict=True))
    tiers = []
    for t in range(4):
        lev, cap = nxt("Exchange", "tierLimits")
        tiers.append({"tier": t, "name": TIER_NAMES[t], "max_leverage": lev, "max_order_notional": cap})
    (global_oi,) = nxt("Exchange", "globalOpenInterest")
    out = ChainRead(
        chain_id=deployment.chain_id,
        block_number=int(head["number"], 16),
        block_hash=str(head["hash"]),
        block_timestamp=int(head["timestamp"], 16),
        balance=f[0],
        total_fee_income=f[1],
        total_penalty_income=f[2],
        total_donations=f[3],
        total_payouts=f[4],
        params=params,
        tiers=tiers,
        global_oi=global_oi,
    )
    for m in markets:
        ((symbol, mmr, long_cap, short_cap, _listed),) = nxt("Exchange", "market")
        ms = nxt("Exchange", "marketState")
        long_size, short_size, long_notional, short_notional = nxt("Exchange", "openInterest")
        next_rate, due = nxt("Exchange", "nextFunding")
        adl_raw = next(it)  # adlState reverts while the oracle is invalid
        if isinstance(adl_raw, RpcError):
            adl_ok, adl = False, (0, 0, bool(ms[7]))
        else:
            adl_ok, adl = True, fn("Exchange", "adlState").decode(adl_raw)
        ok, mark = nxt("OracleHub", "tryMarkPrice")
        (status,) = nxt("OracleHub", "status")
        pp, pr = nxt("OracleHub", "readSource")
        sp, sr = nxt("OracleHub", "readSource")
        out.markets.append(
            MarketRead(
                market_id=m.id, symbol=symbol or m.symbol, mark_ok=bool(ok), mark_price=mark,
                oracle_status=status, primary_price=pp, primary_reason=pr, secondary_price=sp,
                secondary_reason=sr, mmr_bps=mmr, long_oi_cap=long_cap, short_oi_cap=short_cap,
                long_size=long_size, short_size=short_size, long_notional=long_notional,
                short_notional=short_notional, funding_index=ms[4], last_funding_rate=ms[6],
                last_funding_period=ms[5], next_funding_rate=next_rate, next_funding_due=due,
                adl_ok=adl_ok, adl_trader_pnl=adl[0], adl_vault_assets=adl[1], adl_active=bool(adl[2]),
            )
        )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------ database side


def index_checkpoint(conn: Any, chain_id: int) -> int | None:
    row = conn.execute(select(CHECKPOINTS.c.block_number).where(CHECKPOINTS.c.chain_id == chain_id)).first()
    return int(row[0]) if row else None


def income_24h(conn: Any, chain_id: int, block: int, block_timestamp: int) -> dict[str, int]:
    """Fees, penalties, payouts, bad debt and socialized loss of the 24 h of block time up to ``block``.

    Sums in Python: BigInt columns are text on SQLite (see keeper.store.types).
    """
    since = block_timestamp - DAY
    out = {"fees": 0, "penalties": 0, "payouts": 0, "bad_debt": 0, "socialized": 0}
    ff = FUND_FLOWS.c
    rows = conn.execute(
        select(ff.direction, ff.kind, ff.amount).where(
            ff.chain_id == chain_id, ff.block_number <= block, ff.block_timestamp > since
        )
    )
    for direction, kind, amount in rows:
        if direction == "payout":
            out["payouts"] += amount
        elif kind == 0:
            out["fees"] += amount
        elif kind == 1:
            out["penalties"] += amount
    bd = BAD_DEBTS.c
    for debt, socialized in conn.execute(
        select(bd.debt, bd.socialized).where(
            bd.chain_id == chain_id, bd.block_number <= block, bd.block_timestamp > since
        )
    ):
        out["bad_debt"] += debt
        out["socialized"] += socialized
    return out


def downsample(
    conn: Any, chain_id: int, now_ts: int, keep_seconds: int = DAY, retention: int | None = None
) -> int:
    """Keeps every snapshot of the last ``keep_seconds`` (block time), then the first of each hour.

    Returns how many fund snapshots were deleted (their market rows go with them).
    """
    fs = FUND_SNAPSHOTS.c
    cutoff = now_ts - keep_seconds
    rows = conn.execute(
        select(fs.id, fs.block_timestamp)
        .where(fs.chain_id == chain_id, fs.block_timestamp < cutoff)
        .order_by(fs.block_timestamp, fs.id)
    ).all()
    seen: set[int] = set()
    doomed: list[int] = []
    for sid, ts in rows:
        if retention is not None and ts < now_ts - retention:
            doomed.append(sid)
            continue
        bucket = ts // HOUR
        if bucket in seen:
            doomed.append(sid)
        else:
            seen.add(bucket)
    for i in range(0, len(doomed), 500):
        chunk = doomed[i : i + 500]
        conn.execute(delete(MARKET_SNAPSHOTS).where(MARKET_SNAPSHOTS.c.snapshot_id.in_(chunk)))
        conn.execute(delete(FUND_SNAPSHOTS).where(FUND_SNAPSHOTS.c.id.in_(chunk)))
    return len(doomed)


def whale_id(address: str, salt: str) -> str:
    """An anonymized, stable id of an account: a salted SHA-256, truncated to 12 hex digits."""
    return "w-" + hashlib.sha256(f"{salt}:{address.lower()}".encode()).hexdigest()[:12]


def size_band(notional_units: int) -> str:
    for label, low in BANDS:
        if notional_units >= low:
            return label
    return BANDS[-1][0]


def whale_rows(conn: Any, read: ChainRead, top: int, salt: str) -> list[dict[str, Any]]:
    """The ``top`` largest positions per market at the read's marks, anonymized."""
    marks = {m.market_id: m.mark_price for m in read.markets if m.mark_ok}
    p = POSITIONS.c
    by_market: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for account, market_id, size in conn.execute(
        select(p.account, p.market_id, p.size).where(p.chain_id == read.chain_id)
    ):
        if size != 0 and market_id in marks:
            by_market[int(market_id)].append((account, size))
    out: list[dict[str, Any]] = []
    for market_id, positions in sorted(by_market.items()):
        mark = marks[market_id]
        sized = [(a, s, notional(s, mark)) for a, s in positions]
        total = sum(n for _, _, n in sized)
        sized.sort(key=lambda x: (-x[2], x[0]))
        for rank, (account, size, n) in enumerate(sized[:top], start=1):
            out.append(
                {
                    "chain_id": read.chain_id,
                    "taken_at": read.block_timestamp,
                    "block_number": read.block_number,
                    "market_id": market_id,
                    "rank": rank,
                    "account_id": whale_id(account, salt),
                    "side": "long" if size > 0 else "short",
                    "size": size,
                    "notional": n,
                    "share_bps": n * BPS // total if total else 0,
                    "band": size_band(n),
                }
            )
    return out


def write_snapshot(
    engine: Engine,
    read: ChainRead,
    *,
    read_at: float | None = None,
    keep_seconds: int = DAY,
    retention: int | None = None,
    whale_interval: int = HOUR,
    whale_top: int = 20,
    whale_salt: str = "zanbara-whales",
) -> int:
    """Writes the snapshot of ``read`` (with the 24 h figures from the index) in one transaction."""
    with for_writes(engine).begin() as conn:
        cp = index_checkpoint(conn, read.chain_id)
        upto = read.block_number if cp is None else min(cp, read.block_number)
        inc = income_24h(conn, read.chain_id, upto, read.block_timestamp)
        snap = {
            "chain_id": read.chain_id,
            "block_number": read.block_number,
            "block_hash": read.block_hash,
            "block_timestamp": read.block_timestamp,
            "read_at": read_at if read_at is not None else time.time(),
            "balance": read.balance,
            "total_fee_income": read.total_fee_income,
            "total_penalty_income": read.total_penalty_income,
            "total_donations": read.total_donations,
            "total_payouts": read.total_payouts,
            "total_position_value": read.total_position_value,
            "coverage_bps": read.coverage_bps,
            "complete": read.complete,
            "income_24h_fees": inc["fees"],
            "income_24h_penalties": inc["penalties"],
            "payouts_24h": inc["payouts"],
            "bad_debt_24h": inc["bad_debt"],
            "socialized_24h": inc["socialized"],
            "index_block": cp,
            "params": {
                "params": {k: str(v) for k, v in read.params.items()},
                "tiers": [
                    {
                        **t,
                        "max_leverage": str(t["max_leverage"]),
                        "max_order_notional": str(t["max_order_notional"]),
                    }
                    for t in read.tiers
                ],
                "global_oi": str(read.global_oi),
            },  # fmt: skip
        }
        pk = conn.execute(insert(FUND_SNAPSHOTS).values(**snap)).inserted_primary_key
        assert pk is not None
        sid = int(pk[0])
        conn.execute(
            insert(MARKET_SNAPSHOTS),
            [
                {"snapshot_id": sid, "chain_id": read.chain_id, "block_number": read.block_number,
                 **m.__dict__}
                for m in read.markets
            ],
        )  # fmt: skip
        downsample(conn, read.chain_id, read.block_timestamp, keep_seconds, retention)
        ws = WHALE_SNAPSHOTS.c
        last = conn.execute(
            select(ws.taken_at).where(ws.chain_id == read.chain_id).order_by(ws.taken_at.desc()).limit(1)
        ).first()
        if (
            last is None
            or read.block_timestamp - int(last[0]) >= whale_interval
            or read.block_timestamp < last[0]
        ):
            rows = whale_rows(conn, read, whale_top, whale_salt)
            if rows:
                conn.execute(insert(WHALE_SNAPSHOTS), rows)
    return sid


# ------------------------------------------------------------------------------------ the loop


class Publisher:
    """Polls the head and publishes a snapshot per new head (new number or, after a reorg, new hash),
    and at least every ``max_interval``."""

    def __init__(
        self,
        engine: Engine,
        rpc: RpcClient,
        deployment: Deployment,
        *,
        poll_interval: float = 1.0,
        max_interval: float = 10.0,
        keep_seconds: int = DAY,
        retention: int | None = None,
        whale_interval: int = HOUR,
        whale_top: int = 20,
        whale_salt: str = "zanbara-whales",
        metrics: Any = None,
        lag_blocks: int = 1,
    ) -> None:
        self.engine = engine
        self.lag_blocks = lag_blocks
        self.rpc = rpc
        self.deployment = deployment
        self.poll_interval = min(poll_interval, 2.0)
        self.max_interval = min(max_interval, 10.0)
        self.keep_seconds = keep_seconds
        self.retention = retention
        self.whale_interval = whale_interval
        self.whale_top = whale_top
        self.whale_salt = whale_salt
        self.metrics = metrics
        self.last_block: int | None = None
        self._seen_head: tuple[int, str] | None = None
        self.last_time = 0.0
        self.published = 0

    @classmethod
    def from_settings(
        cls, settings: Any, engine: Engine, rpc: RpcClient, deployment: Deployment
    ) -> Publisher:
        p = settings.publisher
        from keeper.observability.metrics import METRICS

        return cls(
            engine, rpc, deployment, poll_interval=p.poll_interval, max_interval=p.max_interval,
            keep_seconds=p.full_resolution_seconds, retention=p.retention_seconds,
            whale_interval=p.whale_interval, whale_top=p.whale_top, whale_salt=p.whale_salt, metrics=METRICS,
        )  # fmt: skip

    async def publish_once(self, block: int | None = None) -> int:
        """Reads at ``block`` (default: the head, for one-shot reads where nothing is being mined; the
        loop of :meth:`run` reads ``lag_blocks`` behind it) and writes a snapshot; returns its id."""
        for attempt in range(3):
            number = block if block is not None else int(await self.rpc.call("eth_blockNumber"), 16)
            try:
                read = await read_at_block(self.rpc, self.deployment, number)
                break
            except ReorgDuringRead:
                if block is not None or attempt == 2:
                    raise
        sid = await asyncio.to_thread(
            write_snapshot, self.engine, read, keep_seconds=self.keep_seconds, retention=self.retention,
            whale_interval=self.whale_interval, whale_top=self.whale_top, whale_salt=self.whale_salt,
        )  # fmt: skip
        self.last_block, self.last_time = read.block_number, time.monotonic()
        self.published += 1
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                self.metrics.fund_balance.set(read.balance / 10**6)
                if read.coverage_bps is not None:
                    self.metrics.fund_coverage.set(read.coverage_bps / BPS)
        log.debug("snapshot %d at block %d", sid, read.block_number)
        return sid

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                # number AND hash: a reorg to a chain of the same height changes the head's hash only;
                # the page must not stay stamped on the orphaned block until the next one comes
                latest = await self.rpc.call("eth_getBlockByNumber", ["latest", False])
                seen = (int(latest["number"], 16), str(latest["hash"]))
                due = time.monotonic() - self.last_time >= self.max_interval
                if seen != self._seen_head or due:
                    await self.publish_once(max(0, seen[0] - self.lag_blocks))
                    self._seen_head = seen
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop survives node hiccups; logged, retried
                log.warning("snapshot failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval)
