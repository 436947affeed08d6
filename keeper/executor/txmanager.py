"""The transaction manager: gets the keeper's transactions mined, one signing key per lane.

One :class:`TxManager` owns one (lane, signing key). **Lanes are separate accounts**: on Ethereum nonces
are per account, so a stuck transaction blocks every later nonce of its sender. The issue asks that ADL
and funding "never block a liquidation": that holds only if they sign with their own key, i.e. run their
own manager (``lane="liquidation"`` with key A, ``lane="adl"`` with key B, ``lane="funding"`` with key
C; two lanes may share one journal database). Two managers on one key would race for nonces:
:meth:`TxManager.recover` refuses a key whose journal rows belong to another lane.

Life of a transaction (every transition written to the :class:`~keeper.executor.journal.TxJournal`
*before* the network action, so a kill -9 anywhere is recoverable):

1. :meth:`submit` simulates the call (``eth_call`` at ``pending``: a liquidation already done, even by a
   transaction still in the pool, reverts) and estimates gas. A revert raises
   :class:`SimulationReverted` (reason, selector, data) and nothing is allocated or sent.
2. Under the lock: a nonce is allocated (seeded from the chain's pending count and the journal), the row
   journaled (``allocated``), the transaction signed with EIP-1559 fees (``2 × base + tip``, never above
   ``max_fee_cap_wei``) and journaled (``signed``), then broadcast (``broadcast``).
3. :meth:`tick` (call it on every new head): receipts of every hash sent at each in-flight nonce →
   ``mined``/``failed``; a transaction no node knows any more (``dropped``) is re-broadcast, same bytes,
   same nonce; one not mined ``replace_after_blocks`` after its latest attempt is simulated again (at
   ``latest``: ``pending`` would include our own transaction) and replaced with both fee fields raised by
   ``bump_pct`` % from the highest fees already sent at that nonce, rounded up, capped. A capped bump is
   not sent (the transaction waits). When the call now reverts, the nonce is taken by a 0-value
   self-transfer instead (a cancellation), so the lane is not held by a transaction bound to revert.
4. Reorgs: a transaction recorded as mined is watched until ``confirmations`` blocks deep. When no
   receipt of any of its hashes is left and its block is no longer canonical (gone, or another hash at
   that height), it was orphaned: :meth:`tick` simulates it again at ``latest`` and re-broadcasts the
   same bytes at the same nonce (state back to ``broadcast``, a fresh handle); when the call now reverts
   (the work was done by someone else meanwhile), it is not sent: the nonce is taken by a self-transfer
   (outcome ``cancelled``, error "orphaned by a reorg ... done by someone else"), since our later nonces
   need it. A receipt found in another block (re-included by the new chain) only updates the record.
5. Node answers are resolved by looking up our own hashes, never by blind resending: "already known" is
   a success; "nonce too low" looks for our receipt (ours mined → mined, else the nonce went to a
   transaction not in the journal → failed); "replacement underpriced" / "fee below base fee" reject that
   attempt only (its fees still raise the next bump's floor, so no underpriced loop).

``await handle.wait()`` gives the :class:`TxOutcome`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address

from keeper.chain.rpc import RpcClient, RpcError, RpcTransportError
from keeper.errors import KeeperError
from keeper.executor.fees import DEFAULT_BUMP_PCT, Fees, bump_fees, initial_fees
from keeper.executor.journal import (
    AttemptState,
    JournaledTx,
    KeeperTx,
    KeeperTxAttempt,
    TxJournal,
    TxState,
)
from keeper.executor.keys import Signer, redact
from keeper.observability.metrics import METRICS

__all__ = ["TxManager", "TxHandle", "TxOutcome", "SimulationReverted"]

log = logging.getLogger(__name__)

CANCEL_GAS = 21_000
_ERROR_STRING = "0x08c379a0"
_PANIC = "0x4e487b71"


class SimulationReverted(Exception):
    """The call reverts: it was not sent. ``selector`` is the custom error's 4 bytes (0x...), if any."""

    def __init__(self, reason: str, data: str | None) -> None:
        self.reason = reason
        self.data = data
        self.selector = data[:10] if data and len(data) >= 10 else None
        super().__init__(f"simulation reverted: {reason}")


@dataclass(frozen=True)
class TxOutcome:
    """``state``: mined (status 1), reverted (mined, status 0), cancelled (nonce taken by a self-transfer
    because the call came to revert), failed (nonce consumed by a transaction not in the journal)."""

    tx_id: int
    nonce: int
    state: str
    tx_hash: str | None
    block_number: int | None
    receipt_status: int | None
    attempts: int
    error: str | None = None


class TxHandle:
    """A submitted transaction; ``await handle.wait()`` for its outcome."""

    def __init__(self, tx_id: int, nonce: int, lane: str, purpose: str, tx_hash: str | None) -> None:
        self.tx_id, self.nonce, self.lane, self.purpose, self.tx_hash = tx_id, nonce, lane, purpose, tx_hash
        #: set when a reorg orphaned the transaction after this handle resolved: the handle of its re-send
        self.reorged: TxHandle | None = None
        self._future: asyncio.Future[TxOutcome] = asyncio.get_running_loop().create_future()

    def done(self) -> bool:
        return self._future.done()

    @property
    def outcome(self) -> TxOutcome | None:
        return self._future.result() if self._future.done() else None

    async def wait(self, timeout: float | None = None) -> TxOutcome:
        return await asyncio.wait_for(asyncio.shield(self._future), timeout)

    def _resolve(self, outcome: TxOutcome) -> None:
        if not self._future.done():
            self._future.set_result(outcome)

    def __repr__(self) -> str:
        return f"TxHandle(id={self.tx_id}, lane={self.lane}, nonce={self.nonce}, purpose={self.purpose!r})"


def _hex(n: int) -> str:
    return hex(n)


def _msg(exc: RpcError) -> str:
    return exc.message.lower()


def _revert_reason(exc: RpcError) -> SimulationReverted:
    data = exc.revert_data
    reason = exc.message
    try:
        if data and data.startswith(_ERROR_STRING):
            reason = str(abi_decode(["string"], bytes.fromhex(data[10:]))[0])
        elif data and data.startswith(_PANIC):
            reason = f"panic 0x{abi_decode(['uint256'], bytes.fromhex(data[10:]))[0]:02x}"
    except Exception:  # noqa: BLE001 - a malformed payload keeps the node's message
        pass
    return SimulationReverted(reason, data)


class TxManager:
    """See the module docstring. One instance per (lane, signing key)."""

    def __init__(
        self,
        rpc: RpcClient,
        signer: Signer,
        journal: TxJournal,
        lane: str,
        chain_id: int,
        max_fee_cap_wei: int,
        replace_after_blocks: int = 3,
        bump_pct: float = DEFAULT_BUMP_PCT,
        *,
        gas_margin: float = 1.2,
        min_priority_fee_wei: int = 0,
        base_fee_multiplier: int = 2,
        simulate_block: str = "pending",
        foreign_nonce_ticks: int = 2,
        send_guard: Callable[[], Awaitable[Any]] | None = None,
        confirmations: int = 12,
    ) -> None:
        if max_fee_cap_wei <= 0:
            raise KeeperError("max_fee_cap_wei must be positive")
        if bump_pct < 10:
            raise KeeperError("bump_pct below 10 % is refused by geth-like nodes as underpriced")
        self.rpc = rpc
        #: Awaited before every broadcast; raises to refuse it (the leader's fence: a node that lost
        #: leadership must not send, even a transaction it had already signed).
        self.send_guard = send_guard
        self.signer = signer
        self.sender = to_checksum_address(signer.address)
        self.journal = journal
        self.lane = lane
        self.chain_id = chain_id
        self.cap = max_fee_cap_wei
        self.replace_after_blocks = replace_after_blocks
        self.bump_pct = bump_pct
        self.gas_margin = gas_margin
        self.min_priority_fee = min_priority_fee_wei
        self.base_fee_multiplier = base_fee_multiplier
        self.simulate_block = simulate_block
        self.foreign_nonce_ticks = foreign_nonce_ticks
        #: mined transactions shallower than this are checked for reorgs on every tick
        self.confirmations = confirmations
        self._head: int | None = None  # the latest head seen (bounds the journal's reorg query)
        self._reopened_at: dict[int, int] = {}  # tx id -> head at which a reorg put it back in flight
        self._lock = asyncio.Lock()
        self._next_nonce: int | None = None
        self._handles: dict[int, TxHandle] = {}
        METRICS.pending_transactions.labels(lane=lane).set_function(lambda: len(self.handles()))
        self._foreign: dict[int, int] = {}  # tx id -> ticks seen with its nonce consumed and no receipt
        self._resent_at: dict[int, int] = {}  # tx id -> head block of its last re-broadcast
        self.stats = {
            "broadcasts": 0,
            "replacements": 0,
            "rebroadcasts": 0,
            "rejected": 0,
            "capped_waits": 0,
            "orphaned": 0,
        }

    # -- public API -------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._next_nonce is not None

    def handles(self) -> list[TxHandle]:
        """Handles of the transactions not yet resolved (recovered ones included)."""
        return [h for h in self._handles.values() if not h.done()]

    async def recover(self) -> list[TxHandle]:
        """At start-up: seeds the nonce and resumes every in-flight journaled transaction."""
        async with self._lock:
            other = self.journal.lanes(self.chain_id, self.sender) - {self.lane}
            if other:
                raise KeeperError(
                    f"key {self.sender} already signs for lane(s) {sorted(other)}: give each lane its own key"
                )
            pending = int(await self.rpc.call("eth_getTransactionCount", [self.sender, "pending"]), 16)
            self._next_nonce = max(pending, self.journal.next_nonce(self.chain_id, self.sender))
            recovered = self.journal.in_flight(self.chain_id, self.sender, self.lane)
            for jt in recovered:
                self._handle_for(jt)
            log.info(
                "txmanager %s/%s: next nonce %d, %d in flight",
                self.lane,
                self.sender,
                self._next_nonce,
                len(recovered),
            )
        await self.tick()
        return [self._handles[jt.tx.id or 0] for jt in recovered]

    async def submit(
        self,
        to: str,
        data: str | bytes,
        gas: int | None = None,
        purpose: str = "",
        value: int = 0,
        min_gas: int = 0,
        estimate_also: Sequence[str] = (),
    ) -> TxHandle:
        """Simulates, estimates gas, allocates a nonce, signs, journals and broadcasts; a revert raises
        :class:`SimulationReverted` before anything is allocated. ``min_gas`` floors the estimated
        limit; ``estimate_also``: more blocks to estimate at (concurrently), the largest wins. An estimate
        at ``pending`` may take a cheap path (e.g. entries another keeper's pooled transaction already
        settles) that the transaction will not take if mined first: ``latest`` does not see that pool."""
        if not self.started:
            await self.recover()
        to = to_checksum_address(to)
        data_hex = data if isinstance(data, str) else "0x" + data.hex()
        call = {"from": self.sender, "to": to, "data": data_hex, "value": _hex(value)}
        # The simulation, the estimates and the fee market at once: a liquidation batch's simulation and
        # estimates are each a full execution of the batch by the node, and one after the other they
        # made a step longer than a block under a crash (heads skipped, accounts waiting a block more).
        blocks = (
            []
            if gas is not None
            else [self.simulate_block, *(b for b in estimate_also if b != self.simulate_block)]
        )
        sim, market, *answers = await asyncio.gather(
            self._simulate(call, self.simulate_block),
            self._market(),
            *(self.rpc.call("eth_estimateGas", [call, b]) for b in blocks),
            return_exceptions=True,
        )
        if isinstance(sim, BaseException):
            raise sim  # SimulationReverted first: nothing is allocated
        if gas is None:
            first = answers[0]
            if isinstance(first, RpcError) and first.reverted:
                raise _revert_reason(first) from None
            if isinstance(first, BaseException):
                raise first
            # an extra block's estimate that fails (e.g. reverts there) does not count
            est = max(int(a, 16) for a in answers if isinstance(a, str))
            gas = max(int(est * self.gas_margin), min_gas)
        if isinstance(market, BaseException):
            raise market
        head, base_fee, tip = market
        fees = initial_fees(base_fee, tip, self.cap, base_multiplier=self.base_fee_multiplier)
        async with self._lock:
            assert self._next_nonce is not None
            nonce = self._next_nonce
            row = self.journal.allocate(KeeperTx(
                chain_id=self.chain_id, lane=self.lane, sender=self.sender, nonce=nonce, purpose=purpose,
                to_address=to, data=data_hex, value=str(value), gas_limit=gas, created_block=head,
                updated_block=head,
            ))  # fmt: skip
            self._next_nonce = nonce + 1
            jt = JournaledTx(row, [])
            handle = self._handle_for(jt)
            attempt = self._sign_attempt(jt, fees, head, cancel=False)
            handle.tx_hash = attempt.tx_hash
            await self._broadcast(jt, attempt, head)
        return handle

    async def tick(self, head_block: int | None = None) -> None:
        """Checks receipts, re-broadcasts dropped transactions and replaces stuck ones."""
        async with self._lock:
            rows = self.journal.in_flight(self.chain_id, self.sender, self.lane)
            recent = self._recently_mined()
            if not rows and not recent:
                return
            head, base_fee, market_tip = await self._market()
            if head_block is not None:
                head = max(head, head_block)
            recent = [jt for jt in recent if (jt.tx.mined_block or 0) > head - self.confirmations]
            if recent and await self._check_reorgs(recent, head, base_fee, market_tip):
                rows = self.journal.in_flight(self.chain_id, self.sender, self.lane)
            if not rows:
                return
            calls: list[tuple[str, Sequence[Any]]] = [("eth_getTransactionCount", [self.sender, "latest"])]
            for jt in rows:
                calls += [("eth_getTransactionReceipt", [h]) for h in jt.hashes]
                live = jt.live
                calls.append(
                    (
                        "eth_getTransactionByHash",
                        [live.tx_hash if live else jt.hashes[-1] if jt.hashes else "0x" + "00" * 32],
                    )
                )
            results = await self.rpc.batch(calls)
            for r in results:
                if isinstance(r, RpcError):
                    raise r
            chain_nonce = int(results[0], 16)
            i = 1
            for jt in rows:
                receipts = results[i : i + len(jt.hashes)]
                i += len(jt.hashes)
                known = results[i] is not None
                i += 1
                await self._advance(jt, receipts, known, chain_nonce, head, base_fee, market_tip)

    # -- internals --------------------------------------------------------------------------------
    def _recently_mined(self) -> list[JournaledTx]:
        """Our mined transactions that a reorg may still orphan (within ``confirmations`` of the head)."""
        if self.confirmations <= 0:
            return []
        floor = (self._head if self._head is not None else 0) - self.confirmations
        return self.journal.recently_mined(self.chain_id, self.sender, self.lane, floor)

    async def _check_reorgs(self, recent: Sequence[JournaledTx], head: int, base_fee: int, tip: int) -> bool:
        """Receipts and block hashes of recently mined transactions; orphaned ones are re-sent (or their
        nonce taken by a cancellation). True when one was put back in flight."""
        calls: list[tuple[str, Sequence[Any]]] = []
        for jt in recent:
            calls += [("eth_getTransactionReceipt", [h]) for h in jt.hashes]
            calls.append(("eth_getBlockByNumber", [_hex(jt.tx.mined_block or 0), False]))
        results = await self.rpc.batch(calls)
        for r in results:
            if isinstance(r, RpcError):
                raise r
        i, reopened = 0, False
        for jt in recent:
            receipts = results[i : i + len(jt.hashes)]
            block = results[i + len(jt.hashes)]
            i += len(jt.hashes) + 1
            found = next((r for r in receipts if isinstance(r, dict) and r.get("blockNumber")), None)
            row = jt.tx
            if found is not None:
                if (found["blockHash"], found["transactionHash"]) != (
                    row.mined_block_hash,
                    row.mined_tx_hash,
                ):
                    self._reincluded(jt, found)
                continue
            canonical = block.get("hash") if isinstance(block, dict) else None
            if row.mined_block_hash is not None and canonical == row.mined_block_hash:
                continue  # its block is still canonical: a node without the receipt (yet), not a reorg
            await self._orphaned(jt, head, base_fee, tip)
            reopened = True
        return reopened

    def _reincluded(self, jt: JournaledTx, receipt: dict[str, Any]) -> None:
        """Re-included by the new chain (another block, or another of our attempts): re-recorded."""
        row, block = jt.tx, int(receipt["blockNumber"], 16)
        status = int(receipt.get("status", "0x1"), 16)
        log.info(
            "tx %s (nonce %d) re-included in block %d after a reorg",
            receipt["transactionHash"],
            row.nonce,
            block,
        )
        self.journal.finalize(
            row.id or 0,
            TxState.MINED if status == 1 else TxState.FAILED,
            tx_hash=receipt["transactionHash"],
            block=block,
            receipt_status=status,
            error=row.error,
            block_hash=receipt["blockHash"],
        )

    async def _orphaned(self, jt: JournaledTx, head: int, base_fee: int, tip: int) -> None:
        """A mined transaction whose block left the chain: simulated again, then re-broadcast (same bytes,
        same nonce), or, when the call now reverts, its nonce taken by a self-transfer."""
        row = jt.tx
        self.stats["orphaned"] += 1
        mined = next((a for a in jt.attempts if a.tx_hash == row.mined_tx_hash), jt.latest)
        assert mined is not None
        log.warning("tx %s (nonce %d) mined in block %s was orphaned by a reorg", mined.tx_hash, row.nonce,
                    row.mined_block)  # fmt: skip
        reason = None
        if mined.kind != "cancel":
            call = {"from": self.sender, "to": row.to_address, "data": row.data,
                    "value": _hex(int(row.value)), "gas": _hex(row.gas_limit)}  # fmt: skip
            try:
                await self._simulate(call, "latest")
            except SimulationReverted as rev:
                reason = rev.reason
        error = (
            f"orphaned by a reorg (block {row.mined_block})"
            if reason is None
            else f"orphaned by a reorg (block {row.mined_block}); done by someone else meanwhile, not sent "
            f"again ({reason}): nonce taken by a self-transfer"
        )
        self.journal.reopen(row.id or 0, error=error, block=head)
        row.state, row.error = TxState.DROPPED.value, error
        row.mined_tx_hash = row.mined_block_hash = None
        row.mined_block = row.receipt_status = None
        mined.state = AttemptState.DROPPED.value
        self._reopened_at[row.id or 0] = head
        old = self._handles.pop(row.id or 0, None)
        handle = self._handle_for(jt)
        handle.tx_hash = mined.tx_hash
        if old is not None:
            old.reorged = handle
        if reason is None:
            self.stats["rebroadcasts"] += 1
            self._resent_at[row.id or 0] = head
            if mined.max_fee >= base_fee:
                await self._broadcast(jt, mined, head)
            else:
                await self._replace(jt, head, base_fee, tip)
            return
        # The node may hold the orphaned bytes again (geth re-injects them): outbid them.
        prev = Fees(max(a.max_fee for a in jt.attempts), max(a.priority_fee for a in jt.attempts))
        mult = self.base_fee_multiplier
        fees = bump_fees(prev, base_fee, tip, self.cap, self.bump_pct, base_multiplier=mult) or initial_fees(
            base_fee, tip, self.cap, base_multiplier=mult
        )
        attempt = self._sign_attempt(jt, fees, head, cancel=True)
        handle.tx_hash = attempt.tx_hash
        await self._broadcast(jt, attempt, head)

    def _handle_for(self, jt: JournaledTx) -> TxHandle:
        tx_id = jt.tx.id
        assert tx_id is not None
        h = self._handles.get(tx_id)
        if h is None:
            h = TxHandle(tx_id, jt.tx.nonce, self.lane, jt.tx.purpose, jt.tx.tx_hash)
            self._handles[tx_id] = h
        return h

    async def _market(self) -> tuple[int, int, int]:
        """(head block, its base fee, the suggested tip) in one batch."""
        block, tip = await self.rpc.batch(
            [("eth_getBlockByNumber", ["latest", False]), ("eth_maxPriorityFeePerGas", [])]
        )
        if isinstance(block, RpcError):
            raise block
        head = self._head = int(block["number"], 16)
        base_fee = int(block.get("baseFeePerGas") or "0x0", 16)
        if isinstance(tip, RpcError):  # not every node has it: the median tip of recent blocks
            hist = await self.rpc.call("eth_feeHistory", [_hex(5), "latest", [50]])
            rewards = [int(r[0], 16) for r in hist.get("reward") or [] if r]
            tip_wei = sorted(rewards)[len(rewards) // 2] if rewards else 0
        else:
            tip_wei = int(tip, 16)
        return head, base_fee, max(tip_wei, self.min_priority_fee)

    async def _simulate(self, call: dict[str, Any], block: str) -> None:
        try:
            await self.rpc.call("eth_call", [call, block])
        except RpcError as exc:
            if exc.reverted:
                raise _revert_reason(exc) from None
            raise

    def _sign_attempt(self, jt: JournaledTx, fees: Fees, head: int, *, cancel: bool) -> KeeperTxAttempt:
        """Signs the transaction (or its cancellation) with ``fees`` and journals the attempt."""
        row = jt.tx
        gas = CANCEL_GAS if cancel else row.gas_limit
        tx = {
            "type": 2,
            "chainId": self.chain_id,
            "nonce": row.nonce,
            "to": self.sender if cancel else row.to_address,
            "value": 0 if cancel else int(row.value),
            "data": "0x" if cancel else row.data,
            "gas": gas,
            "maxFeePerGas": fees.max_fee,
            "maxPriorityFeePerGas": fees.priority_fee,
        }
        raw = self.signer.sign_transaction(tx)
        attempt = KeeperTxAttempt(
            tx_id=row.id or 0,
            seq=0,
            kind="cancel" if cancel else "tx",
            tx_hash="0x" + keccak(raw).hex(),
            raw_tx="0x" + raw.hex(),
            max_fee=fees.max_fee,
            priority_fee=fees.priority_fee,
            gas_limit=gas,
        )
        attempt = self.journal.add_attempt(
            row.id or 0, attempt, block=head, cancelled=True if cancel else None
        )
        jt.attempts.append(attempt)
        if cancel:
            row.cancelled = True
        return attempt

    async def _broadcast(self, jt: JournaledTx, attempt: KeeperTxAttempt, head: int) -> str:
        """Sends ``attempt``'s bytes; answers ok | mined | rejected | unknown (no answer)."""
        assert attempt.id is not None
        if self.send_guard is not None:
            await self.send_guard()
        try:
            await self.rpc.call("eth_sendRawTransaction", [attempt.raw_tx])
        except RpcTransportError as exc:
            log.warning("broadcast of %s (nonce %d) got no answer: %s", attempt.tx_hash, jt.tx.nonce, exc)
            return "unknown"  # stays 'signed': the next tick sends the same bytes again
        except RpcError as exc:
            m = _msg(exc)
            if "already known" in m or "already imported" in m or "known transaction" in m:
                pass  # the node has exactly these bytes: as good as accepted
            elif "nonce too low" in m or "nonce is too low" in m or "already been used" in m:
                if await self._resolve_from_receipts(jt, head):
                    return "mined"
                self.journal.set_attempt(attempt.id, AttemptState.REJECTED, error=exc.message, block=head)
                attempt.state, attempt.error = AttemptState.REJECTED.value, exc.message
                self.stats["rejected"] += 1
                return "rejected"  # the tick decides (foreign nonce use) once the chain nonce is checked
            else:
                # underpriced, fee below the base fee, insufficient funds...: this attempt only.
                self.journal.set_attempt(attempt.id, AttemptState.REJECTED, error=exc.message, block=head)
                attempt.state, attempt.error = AttemptState.REJECTED.value, exc.message
                self.stats["rejected"] += 1
                log.info(
                    "attempt %s (nonce %d) rejected: %s", attempt.tx_hash, jt.tx.nonce, redact(exc.message)
                )
                return "rejected"
        prev_live = [
            a
            for a in jt.attempts
            if a is not attempt
            and a.state in (AttemptState.BROADCAST, AttemptState.SIGNED, AttemptState.DROPPED)
        ]
        self.journal.set_attempt(
            attempt.id, AttemptState.BROADCAST, broadcast=True, tx_state=TxState.BROADCAST, block=head
        )
        attempt.state = AttemptState.BROADCAST.value
        jt.tx.state = TxState.BROADCAST.value
        for a in prev_live:
            assert a.id is not None
            self.journal.set_attempt(a.id, AttemptState.REPLACED)
            a.state = AttemptState.REPLACED.value
        self.stats["broadcasts"] += 1
        return "ok"

    async def _resolve_from_receipts(self, jt: JournaledTx, head: int) -> bool:
        results = await self.rpc.batch([("eth_getTransactionReceipt", [h]) for h in jt.hashes])
        return self._finish_if_mined(jt, results)

    def _finish_if_mined(self, jt: JournaledTx, receipts: Sequence[Any]) -> bool:
        for r in receipts:
            if isinstance(r, dict) and r.get("blockNumber"):
                status = int(r.get("status", "0x1"), 16)
                block = int(r["blockNumber"], 16)
                METRICS.record_gas(self.lane, int(r.get("gasUsed", "0x0"), 16)
                                   * int(r.get("effectiveGasPrice", "0x0"), 16))  # fmt: skip
                state = TxState.MINED if status == 1 else TxState.FAILED
                error = None if status == 1 else "reverted on chain"
                self.journal.finalize(
                    jt.tx.id or 0,
                    state,
                    tx_hash=r["transactionHash"],
                    block=block,
                    receipt_status=status,
                    error=error,
                    block_hash=r.get("blockHash"),
                )
                cancelled = jt.tx.cancelled and any(
                    a.kind == "cancel" and a.tx_hash == r["transactionHash"] for a in jt.attempts
                )
                kind = "cancelled" if cancelled else ("mined" if status == 1 else "reverted")
                self._resolve(
                    jt,
                    TxOutcome(
                        jt.tx.id or 0,
                        jt.tx.nonce,
                        kind,
                        r["transactionHash"],
                        block,
                        status,
                        len(jt.attempts),
                        error or jt.tx.error if cancelled else error,
                    ),
                )
                return True
        return False

    def _resolve(self, jt: JournaledTx, outcome: TxOutcome) -> None:
        self._foreign.pop(jt.tx.id or 0, None)
        self._resent_at.pop(jt.tx.id or 0, None)
        self._reopened_at.pop(jt.tx.id or 0, None)
        h = self._handles.get(jt.tx.id or 0)
        if h is not None:
            h._resolve(outcome)

    async def _advance(
        self,
        jt: JournaledTx,
        receipts: Sequence[Any],
        known: bool,
        chain_nonce: int,
        head: int,
        base_fee: int,
        market_tip: int,
    ) -> None:
        row = jt.tx
        if self._finish_if_mined(jt, receipts):
            return
        if chain_nonce > row.nonce:  # the nonce is used, and by none of our hashes
            seen = self._foreign[row.id or 0] = self._foreign.get(row.id or 0, 0) + 1
            if seen >= self.foreign_nonce_ticks:
                err = f"nonce {row.nonce} was consumed by a transaction not in the journal"
                self.journal.finalize(
                    row.id or 0, TxState.FAILED, tx_hash=None, block=head, receipt_status=None, error=err
                )
                self._resolve(
                    jt, TxOutcome(row.id or 0, row.nonce, "failed", None, None, None, len(jt.attempts), err)
                )
                self._next_nonce = max(self._next_nonce or 0, chain_nonce)
            return
        latest = jt.latest
        if latest is None:  # crashed between allocation and signing: sign now
            fees = initial_fees(base_fee, market_tip, self.cap, base_multiplier=self.base_fee_multiplier)
            await self._broadcast(jt, self._sign_attempt(jt, fees, head, cancel=False), head)
            return
        live = jt.live
        created = latest.created_block if latest.created_block is not None else head
        age = head - max(created, self._reopened_at.get(row.id or 0, created))
        if live is None or not known or live.state == AttemptState.SIGNED:
            # dropped, never confirmed sent, or every attempt refused: the same bytes again when they can
            # be included, else a bump straight away (there is nothing in a pool to wait for).
            if live is not None and live.state == AttemptState.BROADCAST and not known:
                assert live.id is not None
                self.journal.set_attempt(live.id, AttemptState.DROPPED, tx_state=TxState.DROPPED, block=head)
                live.state = AttemptState.DROPPED.value
                log.warning("tx %s (nonce %d) dropped by the node: re-broadcasting", live.tx_hash, row.nonce)
            # attempts' fees rise with their sequence: the latest is the best one to send again
            if latest.max_fee >= base_fee:
                if self._resent_at.get(row.id or 0) == head:
                    return  # at most one re-broadcast per block (e.g. a node refusing for lack of funds)
                self._resent_at[row.id or 0] = head
                self.stats["rebroadcasts"] += 1
                await self._broadcast(jt, latest, head)
                return
            await self._replace(jt, head, base_fee, market_tip)
            return
        if age >= self.replace_after_blocks:
            await self._replace(jt, head, base_fee, market_tip)

    async def _replace(self, jt: JournaledTx, head: int, base_fee: int, market_tip: int) -> None:
        row = jt.tx
        cancel = row.cancelled
        if not cancel:
            call = {
                "from": self.sender,
                "to": row.to_address,
                "data": row.data,
                "value": _hex(int(row.value)),
                "gas": _hex(row.gas_limit),
            }
            try:
                await self._simulate(call, "latest")  # 'pending' would include our own transaction
            except SimulationReverted as rev:
                log.info(
                    "tx %d (nonce %d) now reverts (%s): cancelling with a self-transfer",
                    row.id,
                    row.nonce,
                    rev.reason,
                )
                self.journal.set_state(row.id or 0, TxState(row.state), error=f"cancelled: {rev.reason}")
                row.error = f"cancelled: {rev.reason}"
                cancel = True
        prev = Fees(max(a.max_fee for a in jt.attempts), max(a.priority_fee for a in jt.attempts))
        fees = bump_fees(
            prev, base_fee, market_tip, self.cap, self.bump_pct, base_multiplier=self.base_fee_multiplier
        )
        if fees is None:
            self.stats["capped_waits"] += 1
            return  # the cap forbids a valid replacement: keep waiting on what was sent
        attempt = self._sign_attempt(jt, fees, head, cancel=cancel)
        self.stats["replacements"] += 1
        log.info(
            "replacing tx %d (nonce %d): max fee %d → %d, tip %d → %d",
            row.id,
            row.nonce,
            prev.max_fee,
            fees.max_fee,
            prev.priority_fee,
            fees.priority_fee,
        )
        result = await self._broadcast(jt, attempt, head)
        if result == "rejected" and "underpriced" in (attempt.error or "").lower():
            # "replacement underpriced": which of our hashes does the node hold? (for the log only: the
            # rejected attempt's fees already raise the floor of the next bump)
            lookups = await self.rpc.batch([("eth_getTransactionByHash", [h]) for h in jt.hashes])
            if not any(isinstance(x, dict) for x in lookups):
                log.warning("nonce %d: the node holds a transaction that is not ours", row.nonce)
