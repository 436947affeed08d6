"""The live book: :class:`keeper.risk.book.Book` fed from the index, marked each block from the chain.

* **Positions** come from the indexer's database: everything at start, then, each time the indexer's
  checkpoint moves, only the accounts touched by the new blocks (rows of ``position_changes``,
  ``liquidations``, ``bad_debts`` and account events above the last block processed) and the markets
  whose funding index moved (``funding_settlements``). A reorg under the last block processed (the
  ``blocks`` window's hash changed, or the checkpoint went back) reloads everything.
* **Marks** come from the chain, one JSON-RPC batch a block, pinned to that block: per market
  ``OracleHub.tryMarkPrice``, ``readSource`` (primary and secondary), ``feed`` (heartbeat, guardian
  pause) and ``status``. :func:`keeper.risk.oracle_guard.judge` decides whether each market is trusted
  (both sources valid and within ``max_deviation_bps`` of each other). An untrusted market keeps its
  last trusted mark, and no account holding it is liquidated by us; its distrust is logged, exposed as
  ``keeper_oracle_untrusted{market}`` and sent to the operator's alert sinks; trust returns when sane.
* **Reconciliation**: :meth:`LiveBook.reconcile` compares N accounts' AV and MM with
  ``Exchange.accountSummary`` at the block the book describes; a mismatch is counted
  (``keeper_book_reconcile_mismatches``), logged, and the account is reloaded from the chain (the chain
  wins). A read at one of the last two blocks is only tentative: anvil answers a call at its latest
  block from its live state, which already holds the block being mined (a liquidation sent a moment
  before shows as done "at" the previous block). A mismatch found there is checked again at the same
  block once the chain is two blocks past it (a settled, historical state) before it counts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode, encode
from eth_utils import keccak, to_checksum_address
from sqlalchemy import Engine, select, union

from keeper.chain.deployments import Deployment
from keeper.chain.rpc import RpcClient, RpcError
from keeper.observability.metrics import METRICS, KeeperMetrics
from keeper.risk import math as rm
from keeper.risk.book import Book
from keeper.risk.oracle_guard import Answer, Verdict, judge
from keeper.store.models import (
    ACCOUNTS,
    BAD_DEBTS,
    BLOCKS,
    CHECKPOINTS,
    EVENTS,
    FUNDING_SETTLEMENTS,
    LIQUIDATIONS,
    MARKETS,
    POSITION_CHANGES,
    POSITIONS,
)

log = logging.getLogger("keeper.risk.live")

SOURCE_REASONS = (
    "none",
    "no feed",
    "non-positive answer",
    "round 0",
    "timestamp in the future",
    "stale answer",
)
FUTURE = SOURCE_REASONS.index("timestamp in the future")  # readSource's code for it
STATUS_NAMES = ("Active", "ReduceOnly", "Paused")
ACCOUNT_EVENTS = ("Deposited", "Withdrawn", "BadDebtSettled")
READ_SOURCE = "readSource(uint256,uint8)"
POSITION_OF = "positionOf(address,uint256)"
FEED_TYPES = ("address", "address", "uint64", "uint64", "uint64", "uint64", "uint256", "uint256", "bool")
SUMMARY_TYPES = ("int256", "int256", "uint256", "uint256", "uint256", "uint8", "uint256", "bool")
#: A read at a block this far below the head reads a settled state (anvil serves the latest block, and
#: the one before it while the next is being committed, from its live state).
SETTLED_DEPTH = 2
#: Tentative mismatches kept for a second look, at most.
MAX_SUSPECTS = 1_000


def selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def calldata(signature: str, types: Sequence[str] = (), args: Sequence[Any] = ()) -> str:
    return "0x" + (selector(signature) + (encode(list(types), list(args)) if types else b"")).hex()


def _summary_call(address: str) -> str:
    return calldata("accountSummary(address)", ["address"], [to_checksum_address(address)])


def _dec(types: Sequence[str], raw: Any) -> tuple[Any, ...]:
    if isinstance(raw, RpcError):
        raise raw
    return tuple(decode(list(types), bytes.fromhex(str(raw)[2:])))


@dataclass(frozen=True)
class RiskParams:
    liquidation_bps: int
    target_bps: int
    penalty_bps: int
    min_remaining: int


@dataclass(frozen=True)
class MarketQuote:
    """One market's oracle reading at one block, and the keeper's verdict on it."""

    market: int
    block: int
    mark: int | None  # tryMarkPrice (None when the contract rejects it)
    primary: int
    secondary: int
    heartbeat: int
    status: str
    verdict: Verdict


@dataclass(frozen=True)
class _Reading:
    quote: MarketQuote
    future: bool  # a source answered "timestamp in the future" (see LiveBook.read_marks)


@dataclass
class LiveStats:
    reloads: int = 0
    full_reloads: int = 0
    reconciled: int = 0
    mismatches: int = 0
    untrusted_transitions: int = 0
    #: near-head reads that disagreed with the book, then agreed at the same block once settled
    ahead_reads: int = 0
    history: list[tuple[int, int, bool]] = field(default_factory=list)  # (block, market, trusted)


class LiveBook:
    """See the module docstring. ``await start()``, then ``await on_block(head)`` each new head."""

    def __init__(
        self,
        rpc: RpcClient,
        engine: Engine,
        deployment: Deployment,
        *,
        max_deviation_bps: int = 200,
        metrics: KeeperMetrics | None = None,
        alerts: Any = None,
    ) -> None:
        self.rpc = rpc
        self.engine = engine
        self.dep = deployment
        self.chain_id = deployment.chain_id
        self.exchange = to_checksum_address(deployment.address("Exchange"))
        self.oracle = to_checksum_address(deployment.address("OracleHub"))
        self.max_deviation_bps = max_deviation_bps
        self.metrics = metrics if metrics is not None else METRICS
        self.alerts = alerts
        self.markets = sorted(m.id for m in deployment.markets)
        self.symbols = {m.id: m.symbol for m in deployment.markets}
        self.book: Book | None = None
        self.params: RiskParams | None = None
        self.user_tier: dict[str, int] = {}
        self.quotes: dict[int, MarketQuote] = {}
        self.trusted: dict[int, bool] = {}
        self.book_block = -1  # the index checkpoint the book's positions describe
        self._book_hash: str | None = None
        self.mark_block = -1  # the block the marks were read at
        self.block_gas_limit = 30_000_000
        self.stats = LiveStats()
        self._rr = itertools.count()
        #: account -> (block, book AV, book MM): a mismatch read near the head, to check once settled
        self._suspects: dict[str, tuple[int, int, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        calls: list[tuple[str, Sequence[Any]]] = [
            ("eth_call", [{"to": self.exchange, "data": calldata("params()")}, "latest"])
        ]
        calls += [
            (
                "eth_call",
                [{"to": self.exchange, "data": calldata("market(uint256)", ["uint256"], [m])}, "latest"],
            )
            for m in self.markets
        ]
        res = await self.rpc.batch(calls)
        p = _dec(["uint256"] * 12, res[0])
        self.params = RiskParams(liquidation_bps=p[2], target_bps=p[3], penalty_bps=p[4], min_remaining=p[5])
        mmr = {}
        for m, r in zip(self.markets, res[1:], strict=True):
            (cfg,) = _dec(["(string,uint256,uint256,uint256,bool)"], r)
            mmr[m] = int(cfg[1])
        self.book = Book(mmr, liquidation_bps=self.params.liquidation_bps)
        await asyncio.to_thread(self._load_all)

    # ------------------------------------------------------------------ database side

    def _checkpoint(self, conn: Any = None) -> tuple[int, str | None] | None:
        if conn is None:
            with self.engine.connect() as own:
                return self._checkpoint(own)
        r = conn.execute(
            select(CHECKPOINTS.c.block_number, CHECKPOINTS.c.block_hash).where(
                CHECKPOINTS.c.chain_id == self.chain_id
            )
        ).first()
        return (int(r[0]), r[1]) if r else None

    def _snapshot_connection(self) -> Any:
        """A connection whose transaction sees one snapshot of the index: the checkpoint and the rows
        it covers read together (PostgreSQL: REPEATABLE READ; SQLite: one transaction is a snapshot)."""
        conn = self.engine.connect()
        if self.engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        return conn

    def _block_hash(self, number: int) -> str | None:
        with self.engine.connect() as conn:
            r = conn.execute(
                select(BLOCKS.c.hash).where(BLOCKS.c.chain_id == self.chain_id, BLOCKS.c.number == number)
            ).first()
        return r[0] if r else None

    def _load_all(self) -> None:
        assert self.book is not None
        with self._snapshot_connection() as conn:
            conn.begin()
            cp = self._checkpoint(conn)
            accts = conn.execute(
                select(ACCOUNTS.c.address, ACCOUNTS.c.collateral, ACCOUNTS.c.tier).where(
                    ACCOUNTS.c.chain_id == self.chain_id
                )
            ).all()
            pos = conn.execute(
                select(
                    POSITIONS.c.account, POSITIONS.c.market_id, POSITIONS.c.size, POSITIONS.c.entry_price,
                    POSITIONS.c.entry_funding_index,
                ).where(POSITIONS.c.chain_id == self.chain_id, POSITIONS.c.size != 0)
            ).all()  # fmt: skip
            funding = self._funding(conn, self.markets)
        by_acct: dict[str, dict[int, rm.PositionState]] = {}
        for a, m, size, entry, fidx in pos:
            by_acct.setdefault(a, {})[int(m)] = rm.PositionState(int(size), int(entry), int(fidx))
        for m, idx in funding.items():
            self.book.funding_index[m] = idx
        self.book.clear()
        for a, coll, tier in accts:
            self.user_tier[a] = int(tier)
            if a in by_acct or int(coll) != 0:
                self.book.set_account(a, int(coll), by_acct.get(a, {}))
        if self.book.marks:
            self.book.rebuild()
        self.book_block, self._book_hash = cp if cp else (-1, None)
        self.stats.full_reloads += 1
        log.info(
            "live book loaded: %d accounts, %d positions at block %d", len(accts), len(pos), self.book_block
        )

    def _funding(self, conn: Any, markets: Iterable[int]) -> dict[int, int]:
        rows = conn.execute(
            select(MARKETS.c.market_id, MARKETS.c.funding_index).where(
                MARKETS.c.chain_id == self.chain_id, MARKETS.c.market_id.in_(list(markets))
            )
        ).all()
        return {int(m): int(i or 0) for m, i in rows}

    def _reload_accounts(self, conn: Any, addresses: Sequence[str]) -> None:
        assert self.book is not None
        for chunk in range(0, len(addresses), 500):
            part = list(addresses[chunk : chunk + 500])
            accts = conn.execute(
                select(ACCOUNTS.c.address, ACCOUNTS.c.collateral, ACCOUNTS.c.tier).where(
                    ACCOUNTS.c.chain_id == self.chain_id, ACCOUNTS.c.address.in_(part)
                )
            ).all()
            pos = conn.execute(
                select(
                    POSITIONS.c.account, POSITIONS.c.market_id, POSITIONS.c.size, POSITIONS.c.entry_price,
                    POSITIONS.c.entry_funding_index,
                ).where(POSITIONS.c.chain_id == self.chain_id, POSITIONS.c.account.in_(part))
            ).all()  # fmt: skip
            by_acct: dict[str, dict[int, rm.PositionState]] = {a: {} for a in part}
            for a, m, size, entry, fidx in pos:
                if int(size) != 0:
                    by_acct[a][int(m)] = rm.PositionState(int(size), int(entry), int(fidx))
            coll = {a: (int(c), int(t)) for a, c, t in accts}
            for a in part:
                c, t = coll.get(a, (0, 0))
                self.user_tier[a] = t
                if a in self.book.accounts or by_acct[a] or c:
                    self.book.set_account(a, c, by_acct[a])
        self.stats.reloads += len(addresses)

    def sync_from_db(self) -> list[str]:
        """Brings the book's positions to the index checkpoint; returns the accounts reloaded."""
        assert self.book is not None
        with self._snapshot_connection() as conn:
            conn.begin()
            cp = self._checkpoint(conn)
            if cp is None:
                return []
            number, cp_hash = cp
            if number == self.book_block and cp_hash == self._book_hash:
                return []
            if number < self.book_block or (
                self._book_hash is not None
                and self._block_hash(self.book_block) not in (None, self._book_hash)
            ):
                log.warning(
                    "index rolled back under block %d (reorg): reloading the whole book", self.book_block
                )
                conn.rollback()
                self._load_all()
                return list(self.book.accounts)
            lo, hi = self.book_block, number
            q = union(
                *(
                    select(t.c.account).where(
                        t.c.chain_id == self.chain_id, t.c.block_number > lo, t.c.block_number <= hi
                    )
                    for t in (POSITION_CHANGES, LIQUIDATIONS, BAD_DEBTS)
                ),
                select(EVENTS.c.account).where(
                    EVENTS.c.chain_id == self.chain_id,
                    EVENTS.c.block_number > lo,
                    EVENTS.c.block_number <= hi,
                    EVENTS.c.event_name.in_(ACCOUNT_EVENTS),
                    EVENTS.c.account.is_not(None),
                ),
            )
            touched = sorted({r[0] for r in conn.execute(q).all() if r[0]})
            fmarkets = sorted(
                {
                    int(r[0])
                    for r in conn.execute(
                        select(FUNDING_SETTLEMENTS.c.market_id).where(
                            FUNDING_SETTLEMENTS.c.chain_id == self.chain_id,
                            FUNDING_SETTLEMENTS.c.block_number > lo,
                            FUNDING_SETTLEMENTS.c.block_number <= hi,
                        )
                    ).all()
                }
            )
            funding = self._funding(conn, fmarkets) if fmarkets else {}
            self._reload_accounts(conn, touched)
        for m, idx in funding.items():
            if m in self.book.funding_index:
                self.book.set_funding_index(m, idx)
        self.book_block, self._book_hash = number, cp_hash
        return touched

    # ------------------------------------------------------------------ chain side

    def _call(self, to: str, data: str, block: str) -> tuple[str, Sequence[Any]]:
        return ("eth_call", [{"to": to, "data": data}, block])

    async def read_marks(self, block: int | None = None) -> dict[int, MarketQuote]:
        """Reads every market's oracle at ``block`` (default latest) in one batch and applies verdicts.

        An answer newer than the block it is read at cannot happen on a consistent read (a feed's
        ``updatedAt`` is the timestamp of the block that wrote it). Anvil produces one when a block is
        mined while the batch runs: the calls see the new block's state with the old block's timestamp,
        and every market updated in the new block would be untrusted for a block (seen in crash drills:
        a block without liquidations). So a "timestamp in the future" reading is read once more, at the
        head by then; a feed that really claims a future time is still refused by the second read.
        """
        assert self.book is not None
        number, quotes = await self._read_quotes(hex(block) if block is not None else "latest")
        if any(q.future for q in quotes.values()):
            log.info("oracle answers newer than block %d (read during a new block?): reading again", number)
            number, quotes = await self._read_quotes("latest")
        self.quotes = {m: q.quote for m, q in quotes.items()}
        self.mark_block = number
        for m, q in self.quotes.items():
            self._set_trust(m, q)
            if q.verdict.trusted and q.mark is not None:
                self.book.set_mark(m, q.mark)
        return self.quotes

    async def _read_quotes(self, tag: str) -> tuple[int, dict[int, _Reading]]:
        """(block number, market -> reading) of one batch at ``tag``."""
        calls: list[tuple[str, Sequence[Any]]] = [("eth_getBlockByNumber", [tag, False])]
        for m in self.markets:
            calls += [
                self._call(self.oracle, calldata("tryMarkPrice(uint256)", ["uint256"], [m]), tag),
                self._call(self.oracle, calldata(READ_SOURCE, ["uint256", "uint8"], [m, 0]), tag),
                self._call(self.oracle, calldata(READ_SOURCE, ["uint256", "uint8"], [m, 1]), tag),
                self._call(self.oracle, calldata("feed(uint256)", ["uint256"], [m]), tag),
                self._call(self.oracle, calldata("status(uint256)", ["uint256"], [m]), tag),
            ]
        res = await self.rpc.batch(calls)
        blk = res[0]
        if isinstance(blk, RpcError):
            raise blk
        number, now = int(blk["number"], 16), int(blk["timestamp"], 16)
        self.block_gas_limit = int(blk["gasLimit"], 16)
        quotes = {}
        for k, m in enumerate(self.markets):
            r = res[1 + 5 * k : 6 + 5 * k]
            ok, mark = _dec(["bool", "uint256"], r[0])
            p, rp = _dec(["uint256", "uint8"], r[1])
            s, rs = _dec(["uint256", "uint8"], r[2])
            f = _dec(FEED_TYPES, r[3])
            heartbeat, paused = int(f[2]), bool(f[8])
            (st,) = _dec(["uint8"], r[4])
            quote = MarketQuote(
                m, number, int(mark) if ok else None, int(p), int(s), heartbeat, STATUS_NAMES[min(st, 2)],
                self._verdict(int(p), int(rp), int(s), int(rs), now, heartbeat, paused, bool(ok)),
            )  # fmt: skip
            quotes[m] = _Reading(quote, FUTURE in (int(rp), int(rs)))
        return number, quotes

    def _verdict(
        self, p: int, rp: int, s: int, rs: int, now: int, heartbeat: int, paused: bool, mark_ok: bool
    ) -> Verdict:
        reasons = []
        if rp:
            reasons.append(f"primary: {SOURCE_REASONS[min(rp, 5)]}")
        if rs:
            reasons.append(f"secondary: {SOURCE_REASONS[min(rs, 5)]}")
        if not reasons:
            # readSource already applied the per-answer rules (round, sign, future, heartbeat): the
            # guard adds the sources' agreement and the guardian's pause.
            v = judge(Answer(1, p, now), Answer(1, s, now), now, heartbeat, self.max_deviation_bps, paused)
            reasons.extend(v.reasons)
        elif paused:
            reasons.append("market paused")
        if not reasons and not mark_ok:
            reasons.append("no mark price")
        return Verdict(not reasons, tuple(reasons))

    def _set_trust(self, m: int, q: MarketQuote) -> None:
        trusted = q.verdict.trusted
        before = self.trusted.get(m)
        self.trusted[m] = trusted
        symbol = self.symbols.get(m, str(m))
        self.metrics.set_oracle_trust(symbol, trusted)
        if before == trusted or (before is None and trusted):
            return
        self.stats.untrusted_transitions += 1
        self.stats.history.append((q.block, m, trusted))
        if not trusted:
            log.warning(
                "oracle of market %s untrusted at block %d: %s — no liquidation there until sane",
                symbol, q.block, "; ".join(q.verdict.reasons),
            )  # fmt: skip
        else:
            log.warning("oracle of market %s trusted again at block %d", symbol, q.block)
        if self.alerts is not None:
            self._spawn(self._alert(m, symbol, q, trusted))

    async def _alert(self, m: int, symbol: str, q: MarketQuote, trusted: bool) -> None:
        from keeper.alerts.dispatcher import AlertKind, OperatorAlert, Severity

        try:
            if trusted:
                await self.alerts.resolve(AlertKind.UNTRUSTED_ORACLE, symbol)
            else:
                await self.alerts.alert(
                    OperatorAlert(
                        AlertKind.UNTRUSTED_ORACLE,
                        f"market {symbol}: oracle untrusted at block {q.block} ({q.verdict.describe()}); "
                        "liquidations paused there",
                        subject=symbol,
                        severity=Severity.CRITICAL,
                    )
                )
        except Exception as exc:  # noqa: BLE001 - an alert sink failing must not stop the keeper
            log.warning("alert delivery failed: %s", exc)

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ queries

    def tradable(self, address: str) -> bool:
        """True when every market the account holds has a trusted oracle (the keeper may act)."""
        assert self.book is not None
        acct = self.book.accounts.get(address)
        return acct is not None and all(self.trusted.get(m, False) for m in acct.positions)

    def liquidatable(self) -> list[tuple[str, int]]:
        """(account, shortfall) of liquidatable accounts whose markets are all trusted."""
        assert self.book is not None
        return [(a, s) for a, s in self.book.liquidatable() if self.tradable(a)]

    def expected_liquidation(self, address: str, market: int) -> tuple[int, bool, int]:
        """(close size, full?, penalty) the contract would apply now, from the book (an estimate of
        the penalty cap: the collateral after realizing is not modelled)."""
        assert self.book is not None and self.params is not None
        acct = self.book.accounts[address]
        pos = acct.positions[market]
        r = self.book.risk(address)
        mark = self.book.marks[market]
        p = self.params
        close, full = rm.liquidation_close_size(
            pos.size, mark, r.value, r.maintenance_margin, self.book.mmr_bps[market], p.target_bps,
            p.penalty_bps, p.min_remaining,
        )  # fmt: skip
        penalty = min(rm.fee(close, mark, p.penalty_bps), max(r.value, 0))
        return close, full, penalty

    # ------------------------------------------------------------------ reconciliation

    async def reconcile(self, n: int) -> list[str]:
        """Compares ``n`` accounts (the at-risk ones first, then round-robin) with the chain at the block
        the book's positions describe (the index checkpoint); returns the mismatched accounts (reloaded
        from the chain).

        The marks are read at that same block in the same batch, so the comparison holds whether or not
        the index lags the block the book's marks were read at (it usually lags by a block or more while
        the chain moves fast: comparing only when both blocks were equal compared nothing then). Near the
        head a mismatch is only a suspect, confirmed by a second read once that block is settled (see the
        module docstring): the chain's answer there may describe the next block."""
        assert self.book is not None
        if n <= 0 or self.book_block < 0:
            return []
        book = self.book
        pool = [a for a, acct in book.accounts.items() if acct.positions and self.tradable(a)]
        if not pool and not self._suspects:
            return []
        head = int(await self.rpc.call("eth_blockNumber"), 16)
        settled = self.book_block <= head - SETTLED_DEPTH
        risky = sorted(pool, key=lambda a: -int(book.tier(a)))[: n // 2]
        start = next(self._rr) * (n - len(risky))
        rest = [pool[(start + i) % len(pool)] for i in range(n - len(risky))] if pool else []
        chosen = list(dict.fromkeys(risky + rest))
        due = [(a, v) for a, v in self._suspects.items() if v[0] <= head - SETTLED_DEPTH]
        tag = hex(self.book_block)
        calls = [
            self._call(self.oracle, calldata("tryMarkPrice(uint256)", ["uint256"], [m]), tag)
            for m in self.markets
        ]
        calls += [self._call(self.exchange, _summary_call(a), tag) for a in chosen]
        calls += [self._call(self.exchange, _summary_call(a), hex(v[0])) for a, v in due]
        res = await self.rpc.batch(calls)
        marks: dict[int, int] = {}
        for m, r in zip(self.markets, res[: len(self.markets)], strict=True):
            if not isinstance(r, RpcError):
                ok, mark = _dec(["bool", "uint256"], r)
                if ok:
                    marks[m] = int(mark)
        bad = []
        k = len(self.markets)
        for a, r in zip(chosen, res[k : k + len(chosen)], strict=True):
            acct = book.accounts[a]
            if isinstance(r, RpcError) or any(m not in marks for m in acct.positions):
                continue  # no valid mark at that block: accountSummary reverts too
            summary = _dec(SUMMARY_TYPES, r)
            mine = rm.account_risk(acct.collateral, acct.positions, marks, book.funding_index, book.mmr_bps)
            self.stats.reconciled += 1
            if (summary[1], summary[2]) == (mine.value, mine.maintenance_margin):
                continue
            if not settled:
                if len(self._suspects) < MAX_SUSPECTS:
                    self._suspects[a] = (self.book_block, mine.value, mine.maintenance_margin)
                continue
            bad.append(a)
            self._mismatch(
                a, self.book_block, (mine.value, mine.maintenance_margin), (summary[1], summary[2])
            )
        for (a, (block, value, mm)), r in zip(due, res[k + len(chosen) :], strict=True):
            if self._suspects.get(a) == (block, value, mm):
                del self._suspects[a]  # (a newer suspicion of the same account, from this round, stays)
            if a in bad or isinstance(r, RpcError):
                continue  # repaired already, or that block's state is gone (pruned, reorged away)
            summary = _dec(SUMMARY_TYPES, r)
            if (summary[1], summary[2]) != (value, mm):
                bad.append(a)
                self._mismatch(a, block, (value, mm), (summary[1], summary[2]))
            else:
                self.stats.ahead_reads += 1
                log.debug(
                    "reconcile: %s at block %d matches once settled (the first read was ahead)", a, block
                )
        log.debug("reconciled %d accounts at block %d: %d mismatches", len(chosen), self.book_block, len(bad))
        for a in dict.fromkeys(bad):
            await self.reload_from_chain(a, self.book_block)
        return bad

    def _mismatch(self, a: str, block: int, mine: tuple[int, int], chain: tuple[int, int]) -> None:
        self.stats.mismatches += 1
        self.metrics.reconcile_mismatches.inc()
        log.warning(
            "reconcile: %s at block %d: book AV %d MM %d, chain AV %d MM %d (chain wins: reloaded)",
            a, block, mine[0], mine[1], chain[0], chain[1],
        )  # fmt: skip

    async def reload_from_chain(self, address: str, block: int) -> None:
        assert self.book is not None
        tag = hex(block)
        who = to_checksum_address(address)
        calls = [self._call(self.exchange, calldata("collateralOf(address)", ["address"], [who]), tag)]
        calls += [
            self._call(self.exchange, calldata(POSITION_OF, ["address", "uint256"], [who, m]), tag)
            for m in self.markets
        ]
        res = await self.rpc.batch(calls)
        (coll,) = _dec(["int256"], res[0])
        positions = {}
        for m, r in zip(self.markets, res[1:], strict=True):
            size, entry, fidx = _dec(["int256", "uint256", "int256"], r)
            if size:
                positions[m] = rm.PositionState(int(size), int(entry), int(fidx))
        self.book.set_account(address, int(coll), positions)
