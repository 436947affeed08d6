"""The liquidator: each block, the live book's liquidatable accounts → batches → ``liquidateBatch``.

Per block (:meth:`Liquidator.step`):

1. ``LiveBook.liquidatable()`` — accounts below 110% whose markets all have trusted oracles;
2. one candidate per account: the market where it holds the largest notional (the contract closes
   there first), with the expected close size, penalty and keeper reward from the book;
3. accounts in one of our in-flight batches (or mined by one the index has not caught up with yet)
   are not sent again;
4. one JSON-RPC batch of ``isLiquidatable`` at ``pending`` drops those another keeper (or a
   transaction in the pool) already liquidated — a *lost race*, counted in
   ``keeper_liquidations{outcome="lost_race"}`` and never sent;
5. :func:`keeper.executor.batching.plan_batches` packs the rest by shortfall into batches of at most
   ``fill`` of the block gas limit, dropping those under ``min_reward`` (default 0: the protocol's keeper
   liquidates even at a loss);
6. :meth:`TxManager.submit` (eth_call simulation, gas estimate, journaled nonce, fee bumps) sends each;
   a simulation revert is a lost race too. Mined batches are read back (``Liquidated`` logs): entries
   the contract skipped are lost races.

The transaction manager's own guarantees (gas spikes, replacement, kill -9 recovery from its journal)
apply unchanged: see :mod:`keeper.executor.txmanager`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_utils import keccak, to_checksum_address
from sqlalchemy.exc import OperationalError

from keeper.chain.rpc import RpcClient, RpcError, RpcTransportError
from keeper.executor.batching import Candidate, GasModel, batch_gas_floor, plan_batches
from keeper.executor.txmanager import SimulationReverted, TxHandle, TxManager
from keeper.observability.latency import LiquidationLatency
from keeper.observability.metrics import METRICS, KeeperMetrics
from keeper.risk import math as rm
from keeper.risk.live import LiveBook, calldata

log = logging.getLogger("keeper.executor.liquidator")

LIQUIDATE_BATCH = keccak(text="liquidateBatch(address[],uint256[])")[:4]
LIQUIDATION_TUPLE = "(address,int256,uint256,uint256,uint256,uint256,bool,int256,uint256,int256)"
LIQUIDATED_TOPIC = "0x" + keccak(text=f"Liquidated(address,uint256,{LIQUIDATION_TUPLE})").hex()


def liquidate_batch_data(entries: Sequence[tuple[str, int]]) -> str:
    accounts = [to_checksum_address(a) for a, _ in entries]
    markets = [m for _, m in entries]
    return "0x" + (LIQUIDATE_BATCH + encode(["address[]", "uint256[]"], [accounts, markets])).hex()


def batch_accounts(data: str) -> list[str]:
    """The accounts of :func:`liquidate_batch_data`'s call data (checksummed); [] for any other data."""
    try:
        raw = bytes.fromhex(data.removeprefix("0x"))
        if raw[:4] != LIQUIDATE_BATCH:
            return []
        accounts, _ = decode(["address[]", "uint256[]"], raw[4:])
    except (ValueError, DecodingError):
        return []
    return [to_checksum_address(a) for a in accounts]


@dataclass(frozen=True)
class PlannedEntry:
    account: str
    market: int
    shortfall: int
    close_size: int
    full: bool
    penalty: int
    reward: int


@dataclass
class _Flight:
    handle: TxHandle
    entries: list[PlannedEntry]
    sent_block: int
    #: once mined: the accounts it liquidated (counted in the stats until a reorg orphans the batch)
    liquidated: list[str] = field(default_factory=list)


@dataclass
class LiquidatorStats:
    sent_batches: int = 0
    sent_entries: int = 0
    mined_batches: int = 0
    liquidated: int = 0
    lost_race: int = 0
    reverted: int = 0
    failed: int = 0
    #: mined batches a reorg orphaned (tracked again through the transaction manager's re-send)
    reorged: int = 0
    liquidated_accounts: list[str] = field(default_factory=list)


class Liquidator:
    def __init__(
        self,
        live: LiveBook,
        txm: TxManager | None,
        rpc: RpcClient,
        *,
        min_reward: int = 0,
        fill: float = 0.5,
        max_batches: int = 2,
        gas: GasModel | None = None,
        metrics: KeeperMetrics | None = None,
    ) -> None:
        self.live = live
        self.txm = txm
        self.rpc = rpc
        self.exchange = live.exchange
        self.min_reward = min_reward
        self.fill = fill
        self.max_batches = max_batches
        self.gas = gas or GasModel()
        self.metrics = metrics if metrics is not None else METRICS
        self.stats = LiquidatorStats()
        #: oracle update -> liquidation mined (keeper_liquidation_latency_*)
        self.latency = LiquidationLatency(self.metrics)
        self._flights: list[_Flight] = []
        #: mined batches a reorg may still orphan: (batch, mined block), kept for the manager's confirmations
        self._mined: list[tuple[_Flight, int]] = []
        #: account -> block of our mined liquidation: not resent until the book has indexed that block
        self._settling: dict[str, int] = {}

    # ------------------------------------------------------------------ planning

    def candidates(self) -> list[PlannedEntry]:
        book = self.live.book
        assert book is not None
        out = []
        for address, shortfall in self.live.liquidatable():
            acct = book.accounts[address]
            market = max(
                acct.positions, key=lambda m: (rm.notional(acct.positions[m].size, book.marks[m]), -m)
            )
            close, full, penalty = self.live.expected_liquidation(address, market)
            keeper_reward, _ = rm.penalty_split(penalty)
            out.append(PlannedEntry(address, market, shortfall, close, full, penalty, keeper_reward))
        return out

    def plan(self, entries: Sequence[PlannedEntry]) -> list[list[PlannedEntry]]:
        by_key = {e.account: e for e in entries}
        batches = plan_batches(
            [Candidate(e.account, e.market, e.shortfall, e.reward) for e in entries],
            self.live.block_gas_limit,
            self.gas,
            fill=self.fill,
            min_reward=self.min_reward,
            max_batches=self.max_batches,
        )
        return [[by_key[c.account] for c in batch] for batch in batches]

    def busy(self) -> set[str]:
        """Accounts in an in-flight batch of ours (one a previous process sent included), or liquidated
        by us in a block not indexed yet."""
        busy = {e.account for f in self._flights for e in f.entries}
        busy |= {a for a, b in self._settling.items() if b > self.live.book_block}
        if self.txm is not None:
            for h in self._recovered():
                jt = self.txm.journal.get(h.tx_id)
                if jt is not None:
                    busy.update(batch_accounts(jt.tx.data))
        return busy

    def _recovered(self) -> list[TxHandle]:
        """Unresolved transactions of the manager that are no batch of this process: those it recovered
        from its journal at start-up (sent before a restart)."""
        if self.txm is None:
            return []
        ours = {id(f.handle) for f in self._flights}
        return [h for h in self.txm.handles() if id(h) not in ours]

    async def _still_liquidatable(self, entries: Sequence[PlannedEntry]) -> list[bool]:
        res = await self.rpc.batch(
            [
                ("eth_call", [{"to": self.exchange, "data": calldata(
                    "isLiquidatable(address)", ["address"], [to_checksum_address(e.account)])}, "pending"])
                for e in entries
            ]
        )  # fmt: skip
        return [not isinstance(r, RpcError) and bool(decode(["bool"], bytes.fromhex(r[2:]))[0]) for r in res]

    # ------------------------------------------------------------------ the block step

    async def step(self, head: int) -> list[list[PlannedEntry]]:
        """Plans and sends this block's batches; returns what was sent."""
        await self.collect()
        self._settling = {a: b for a, b in self._settling.items() if b > self.live.book_block}
        busy = self.busy()
        candidates = self.candidates()
        self.latency.seen(head, (e.account for e in candidates))
        entries = [e for e in candidates if e.account not in busy]
        if not entries:
            return []
        alive = await self._still_liquidatable(entries)
        for e, ok in zip(entries, alive, strict=True):
            if not ok:
                self._lost(1, f"{e.account} no longer liquidatable at pending")
        entries = [e for e, ok in zip(entries, alive, strict=True) if ok]
        batches = self.plan(entries)
        if self.txm is None:
            return batches
        return await self.send(batches, head)

    async def send(self, batches: Sequence[Sequence[PlannedEntry]], head: int) -> list[list[PlannedEntry]]:
        """Sends planned batches; returns those sent (a simulation revert is a lost race)."""
        assert self.txm is not None
        # All of this block's batches at once: each submit simulates and estimates gas on its own
        # (disjoint accounts), only nonce allocation and broadcast are serialized by the manager's lock.
        # One after another, two full batches took longer than a 1 s block.
        # The estimate (at 'pending', and at 'latest': the larger wins) takes the cheap skip path for
        # entries another keeper's pooled or just-mined transaction settles; mined before it (a higher
        # tip, or a reorg re-including both in another order) ours liquidates them for real: the limit
        # is floored at what every entry costs for real (batch_gas_floor).
        txm = self.txm
        results = await asyncio.gather(
            *(
                txm.submit(
                    self.exchange,
                    liquidate_batch_data([(e.account, e.market) for e in batch]),
                    purpose="liquidation",
                    estimate_also=("latest",),
                    min_gas=batch_gas_floor(len(batch), self.gas),
                )
                for batch in batches
            ),
            return_exceptions=True,
        )
        sent = []
        for batch, res in zip(batches, results, strict=True):
            if isinstance(res, SimulationReverted):
                self._lost(len(batch), f"batch of {len(batch)} reverts in simulation: {res.reason}")
                continue
            if isinstance(res, BaseException):
                raise res
            handle = res
            self._flights.append(_Flight(handle, list(batch), head))
            self.stats.sent_batches += 1
            self.stats.sent_entries += len(batch)
            self.metrics.record_liquidation("sent")
            log.info(
                "liquidation batch sent: %d accounts (nonce %d, tx %s) at block %d",
                len(batch), handle.nonce, handle.tx_hash, head,
            )  # fmt: skip
            sent.append(list(batch))
        return sent

    def _lost(self, n: int, why: str) -> None:
        self.stats.lost_race += n
        for _ in range(n):
            self.metrics.record_liquidation("lost_race")
        log.info("lost race: %s", why)

    async def collect(self) -> None:
        """Accounts for finished batches (receipts read back for the entries actually liquidated).

        Also ticks the transactions the manager recovered from its journal at start-up: after a restart
        they are no batch of this process, but their receipts must still be read (and a stuck one
        replaced), or the journal would never record them as mined."""
        if self.txm is not None and (self._flights or self._mined or self.txm.handles()):
            await self.txm.tick()
        self._follow_reorged()
        still = []
        for f in self._flights:
            out = f.handle.outcome
            if out is None:
                still.append(f)
                continue
            if out.state == "mined":
                self.stats.mined_batches += 1
                self.metrics.record_liquidation("mined")
                done = await self._liquidated_in(out.tx_hash)
                self._mined.append((f, out.block_number or 0))
                for e in f.entries:
                    if e.account.lower() in done:
                        f.liquidated.append(e.account)
                        self.stats.liquidated += 1
                        self.stats.liquidated_accounts.append(e.account)
                        self._settling[e.account] = out.block_number or 0
                        self.latency.mined(e.account, out.block_number or 0)
                    else:
                        self._lost(1, f"{e.account} skipped by the contract in {out.tx_hash}")
            elif out.state == "reverted":
                self.stats.reverted += 1
                self.metrics.record_liquidation("failed")
                log.error("liquidation batch %s reverted on chain", out.tx_hash)
            else:  # cancelled (came to revert before inclusion) or nonce taken: the race was lost
                self.stats.failed += 1
                self._lost(len(f.entries), f"batch {out.state}: {out.error}")
        self._flights = still
        await self.latency.flush(self.rpc)

    def _follow_reorged(self) -> None:
        """A mined batch orphaned by a reorg is re-sent by the manager (or its nonce cancelled when someone
        else did the work meanwhile): its counts are undone and the new handle is tracked like any flight,
        so its accounts stay busy instead of being planned again."""
        depth = self.txm.confirmations if self.txm is not None else 0
        head = self.live.book_block
        kept = []
        for f, block in self._mined:
            if f.handle.reorged is None:
                if block > head - depth:
                    kept.append((f, block))
                continue
            self.stats.reorged += 1
            self.stats.mined_batches -= 1
            self.stats.liquidated -= len(f.liquidated)
            for a in f.liquidated:
                self.stats.liquidated_accounts.remove(a)
                self._settling.pop(a, None)
            log.warning("liquidation batch %s (nonce %d) orphaned by a reorg: following its re-send",
                        f.handle.tx_hash, f.handle.nonce)  # fmt: skip
            self._flights.append(_Flight(f.handle.reorged, f.entries, f.sent_block))
        self._mined = kept

    async def _liquidated_in(self, tx_hash: str | None) -> set[str]:
        if tx_hash is None:
            return set()
        receipt = await self.rpc.call("eth_getTransactionReceipt", [tx_hash])
        done = set()
        for lg in (receipt or {}).get("logs", []):
            topics = lg.get("topics") or []
            if topics and topics[0] == LIQUIDATED_TOPIC and lg["address"].lower() == self.exchange.lower():
                done.add("0x" + topics[1][-40:].lower())
        return done

    @property
    def in_flight(self) -> int:
        """Batches sent and not accounted for yet, plus transactions recovered from the journal."""
        return len(self._flights) + len(self._recovered())


async def run_loop(
    live: LiveBook,
    liquidator: Liquidator,
    rpc: RpcClient,
    *,
    stop: asyncio.Event,
    poll_interval: float = 0.5,
    reconcile_every: int = 10,
    reconcile_accounts: int = 20,
    on_block: Any = None,
) -> None:
    """Follows the chain head: book from the index, marks, liquidations, receipts, reconciliation."""
    last = last_book = -1
    while not stop.is_set():
        try:
            head = int(await rpc.call("eth_blockNumber"), 16)
            await asyncio.to_thread(live.sync_from_db)
            if head != last or live.book_block != last_book:
                await live.read_marks(head)
                await liquidator.step(head)
                if reconcile_accounts and head // reconcile_every != last // reconcile_every:
                    await live.reconcile(reconcile_accounts)
                last, last_book = head, live.book_block
                if on_block is not None:
                    on_block(head)
            elif liquidator.in_flight:
                await liquidator.collect()
        except (RpcError, RpcTransportError, OSError, OperationalError) as exc:
            # A passing RPC or database fault (e.g. SQLite busy past its timeout) skips this step; the
            # next one retries. A keeper must not stop liquidating over one bad read.
            log.warning("liquidation loop: %s", str(exc).splitlines()[0])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_interval)
