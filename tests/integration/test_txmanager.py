"""The transaction manager against a real anvil: send, gas spike, drop, kill -9, foreign broadcast, revert.

Each test drives block production itself (automine off, ``evm_mine``) so that it is deterministic and
takes a few seconds. The journal is SQLite (one test also runs on the PostgreSQL at 127.0.0.1:5432).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_utils import to_checksum_address

from keeper.devchain.anvil import Anvil
from keeper.executor.journal import AttemptState, TxJournal, TxState
from keeper.executor.txmanager import SimulationReverted, TxManager

sys.path.insert(0, str(Path(__file__).resolve().parent))
from txm_support import (  # noqa: E402
    ANVIL_REAL,
    GWEI,
    REVERT_CODE,
    REVERTER,
    SINK,
    SINK_CODE,
    CountingRpc,
    signer,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def node() -> Iterator[Anvil]:
    binary = ROOT / ANVIL_REAL
    if not binary.exists():
        pytest.fail("anvil binary not installed (make setup)")
    with Anvil(binary=binary) as a:
        yield a


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def setup_chain(rpc: CountingRpc, automine: bool) -> None:
    await rpc.call("anvil_setCode", [SINK, SINK_CODE])
    await rpc.call("anvil_setCode", [REVERTER, REVERT_CODE])
    if not automine:
        await rpc.call("evm_setAutomine", [False])


async def mine(rpc: CountingRpc, base_fee: int | None = None) -> int:
    if base_fee is not None:
        await rpc.call("anvil_setNextBlockBaseFeePerGas", [hex(base_fee)])
    await rpc.call("evm_mine", [])
    return int(await rpc.call("eth_blockNumber"), 16)


def manager(
    rpc: CountingRpc,
    journal: TxJournal,
    key: int = 0,
    lane: str = "liquidation",
    cap: int = 100 * GWEI,
    **kw: Any,
) -> TxManager:
    return TxManager(rpc, signer(key), journal, lane, 31337, cap, **kw)


# (a) -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_plain_send_and_mine(node: Anvil, tmp_path: Path, db: str) -> None:
    if db == "postgres":
        pytest.importorskip("psycopg")
        try:
            journal = TxJournal(PG_URL)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"PostgreSQL not reachable: {exc}")
    else:
        journal = TxJournal(f"sqlite:///{tmp_path / 'j.db'}")
    sender = signer(0).address
    journal.delete_sender(31337, sender)  # a shared PostgreSQL may hold rows of a previous run

    async def main() -> None:
        rpc = CountingRpc(node.url)
        try:
            await setup_chain(rpc, automine=True)
            mgr = manager(rpc, journal)
            h1 = await mgr.submit(SINK, "0x1234", purpose="liquidate")
            h2 = await mgr.submit(SINK, b"\x56\x78", purpose="liquidate")
            await mgr.tick()
            o1, o2 = await h1.wait(5), await h2.wait(5)
            assert (o1.state, o2.state) == ("mined", "mined")
            assert (h1.nonce, h2.nonce) == (0, 1)
            receipt = await rpc.call("eth_getTransactionReceipt", [o1.tx_hash])
            assert int(receipt["status"], 16) == 1
            rows = journal.all(31337, sender)
            assert [r.tx.state for r in rows] == [TxState.MINED, TxState.MINED]
            assert rows[0].tx.mined_block == o1.block_number and rows[0].tx.receipt_status == 1
            assert rows[0].attempts[0].state == AttemptState.MINED
            assert rows[0].tx.gas_limit > 21_000 and rows[0].tx.raw_tx.startswith("0x02")
        finally:
            await rpc.close()

    try:
        run(main())
    finally:
        if db == "postgres":
            journal.delete_sender(31337, sender)


# (b) -------------------------------------------------------------------------------------------------
def test_gas_spike_replacements_land_and_cap_holds(node: Anvil, tmp_path: Path) -> None:
    """Base fee ×5 at once, then rising 15 % per block for 20 blocks, then back to 1 gwei.

    The liquidation lane (cap 300 gwei) gets replaced and mined during the spike; the funding lane
    (its own key, cap 4 gwei) can never pay the spike: its fees stop at the cap, it sends no more
    attempts while capped, and it is mined once the base fee falls back.
    """
    journal = TxJournal(f"sqlite:///{tmp_path / 'j.db'}")
    liq_cap, fund_cap = 300 * GWEI, 4 * GWEI

    async def main() -> None:
        rpc = CountingRpc(node.url)
        try:
            await setup_chain(rpc, automine=False)
            liq = manager(rpc, journal, key=0, lane="liquidation", cap=liq_cap)
            fund = manager(rpc, journal, key=1, lane="funding", cap=fund_cap)
            h_liq = await liq.submit(SINK, "0x01", purpose="liquidate")
            h_fund = await fund.submit(SINK, "0x02", purpose="funding")
            base = 5 * GWEI
            liq_landed_at = None
            for block in range(20):
                head = await mine(rpc, base)
                await liq.tick(head)
                await fund.tick(head)
                if liq_landed_at is None and h_liq.done():
                    liq_landed_at = block
                base = base * 115 // 100
            assert liq_landed_at is not None, "the liquidation was not mined during the spike"
            assert not h_fund.done(), "the capped transaction cannot have been mined above its cap"
            fund_attempts_during_spike = len(journal.get(h_fund.tx_id).attempts)
            for _ in range(4):
                head = await mine(rpc, GWEI)
                await liq.tick(head)
                await fund.tick(head)
            o_liq, o_fund = await h_liq.wait(5), await h_fund.wait(5)
            assert o_liq.state == o_fund.state == "mined"
            for h, cap in ((h_liq, liq_cap), (h_fund, fund_cap)):
                jt = journal.get(h.tx_id)
                assert all(a.max_fee <= cap for a in jt.attempts)
                assert not any("underpriced" in (a.error or "") for a in jt.attempts)
                fees = [(a.max_fee, a.priority_fee) for a in jt.attempts]
                for (m0, t0), (m1, t1) in zip(fees, fees[1:], strict=False):  # each bump: both fields +12.5 %
                    assert m1 * 8 >= m0 * 9 and t1 * 8 >= t0 * 9
                tx = await rpc.call("eth_getTransactionByHash", [h.outcome.tx_hash])
                assert int(tx["maxFeePerGas"], 16) <= cap
            assert len(journal.get(h_liq.tx_id).attempts) >= 2  # replaced at least once
            # capped: no attempt loop (3 gwei original, one bump to the 4 gwei cap, then waiting)
            assert fund_attempts_during_spike <= 3
            assert fund.stats["capped_waits"] >= 10
            sends = rpc.counts["eth_sendRawTransaction"]
            assert sends <= 12, f"{sends} broadcasts for two transactions: a resend loop"
        finally:
            await rpc.close()

    run(main())


# (c) -------------------------------------------------------------------------------------------------
def test_dropped_transaction_is_rebroadcast_at_same_nonce(node: Anvil, tmp_path: Path) -> None:
    journal = TxJournal(f"sqlite:///{tmp_path / 'j.db'}")

    async def main() -> None:
        rpc = CountingRpc(node.url)
        try:
            await setup_chain(rpc, automine=False)
            mgr = manager(rpc, journal)
            h = await mgr.submit(SINK, "0xabcd", purpose="liquidate")
            await rpc.call("anvil_dropTransaction", [h.tx_hash])
            assert await rpc.call("eth_getTransactionByHash", [h.tx_hash]) is None
            await mgr.tick()
            assert await rpc.call("eth_getTransactionByHash", [h.tx_hash]) is not None  # same bytes
            assert mgr.stats["rebroadcasts"] == 1
            head = await mine(rpc)
            await mgr.tick(head)
            o = await h.wait(5)
            assert o.state == "mined" and o.tx_hash == h.tx_hash and o.nonce == 0
            tx = await rpc.call("eth_getTransactionByHash", [o.tx_hash])
            assert int(tx["nonce"], 16) == 0
            jt = journal.get(h.tx_id)
            assert len(jt.attempts) == 1 and jt.attempts[0].broadcasts == 2
        finally:
            await rpc.close()

    run(main())


# (d) -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("crash", ["after_broadcast", "between_journal_and_send"])
def test_kill_9_mid_flight_then_recover(node: Anvil, tmp_path: Path, crash: str) -> None:
    db = f"sqlite:///{tmp_path / 'j.db'}"
    script = Path(__file__).resolve().parent / "txm_submitter.py"
    rpc0 = CountingRpc(node.url)
    run(setup_chain(rpc0, automine=False))
    run(rpc0.close())
    args = [sys.executable, str(script), node.url, db, "6"]
    if crash == "between_journal_and_send":
        args += ["--die-before-send", "3"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    sent = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("SENT"):
                sent.append(line.split())
            if len(sent) == 3 and crash == "after_broadcast":
                time.sleep(random.uniform(0, 0.05))  # anywhere in the 4th..6th submission
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert len(sent) >= 3

    journal = TxJournal(db)
    sender = signer(2).address

    async def main() -> None:
        rpc = CountingRpc(node.url)
        try:
            before = journal.all(31337, sender)
            assert len(before) >= 4 or crash == "after_broadcast"
            await mine(rpc)  # part of the pool goes in before the restart
            mgr = TxManager(rpc, signer(2), journal, "liquidation", 31337, 100 * GWEI)
            recovered = await mgr.recover()
            new = [
                await mgr.submit(SINK, "0x" + (b"run2" + i.to_bytes(4, "big")).hex(), gas=50_000)
                for i in range(3)
            ]
            for _ in range(3):
                head = await mine(rpc)
                await mgr.tick(head)
            outcomes = [await h.wait(5) for h in [*recovered, *new]]
            assert all(o.state == "mined" for o in outcomes)
            rows = journal.all(31337, sender)
            nonces = [r.tx.nonce for r in rows]
            assert nonces == list(range(len(rows))), "a nonce was reused or skipped"
            assert all(r.tx.state == TxState.MINED for r in rows)
            chain_nonce = int(await rpc.call("eth_getTransactionCount", [sender, "latest"]), 16)
            assert chain_nonce == len(rows)
            # every journaled call mined exactly once, and nothing else mined from the sender
            mined_data = []
            for n in range(1, int(await rpc.call("eth_blockNumber"), 16) + 1):
                blk = await rpc.call("eth_getBlockByNumber", [hex(n), True])
                mined_data += [t["input"] for t in blk["transactions"] if t["from"].lower() == sender.lower()]
            assert sorted(mined_data) == sorted(r.tx.data for r in rows)
            assert len(set(mined_data)) == len(mined_data)
            printed = {int(s[1]): s[2] for s in sent}
            for r in rows:  # what the dead process reported sent is what got mined
                if r.tx.nonce in printed:
                    assert r.tx.mined_tx_hash == printed[r.tx.nonce]
        finally:
            await rpc.close()

    run(main())


# (e) -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("automine", [True, False], ids=["nonce_too_low", "already_known"])
def test_our_tx_broadcast_behind_our_back_is_recognised(node: Anvil, tmp_path: Path, automine: bool) -> None:
    journal = TxJournal(f"sqlite:///{tmp_path / 'j.db'}")

    async def main() -> None:
        rpc = CountingRpc(node.url)
        try:
            await setup_chain(rpc, automine=automine)
            mgr = manager(rpc, journal)
            await mgr.recover()
            rpc.fail_sends = 1  # the broadcast gets no answer: the row stays 'signed'
            h = await mgr.submit(SINK, "0xbeef", purpose="liquidate")
            jt = journal.get(h.tx_id)
            assert jt.tx.state == TxState.SIGNED
            # the same raw bytes reach the chain another way (another node, a previous process...)
            await rpc.call("eth_sendRawTransaction", [jt.tx.raw_tx])
            await mgr.tick()  # sends again: anvil answers "nonce too low" / "transaction already imported"
            if not automine:
                assert journal.get(h.tx_id).tx.state == TxState.BROADCAST
                await mgr.tick(await mine(rpc))
            o = await h.wait(5)
            assert o.state == "mined" and o.tx_hash == h.tx_hash
            jt = journal.get(h.tx_id)
            assert len(jt.attempts) == 1 and jt.tx.state == TxState.MINED
            # nothing was re-signed at another nonce and the next transaction takes nonce 1
            h2 = await mgr.submit(SINK, "0x01")
            assert h2.nonce == 1
        finally:
            await rpc.close()

    run(main())


# (f) -------------------------------------------------------------------------------------------------
def test_reverting_simulation_is_not_sent(node: Anvil, tmp_path: Path) -> None:
    journal = TxJournal(f"sqlite:///{tmp_path / 'j.db'}")

    async def main() -> None:
        rpc = CountingRpc(node.url)
        try:
            await setup_chain(rpc, automine=True)
            mgr = manager(rpc, journal)
            with pytest.raises(SimulationReverted) as err:
                await mgr.submit(REVERTER, "0x12345678", purpose="liquidate")
            assert err.value.selector == "0xdeadbeef"
            assert rpc.counts.get("eth_sendRawTransaction", 0) == 0
            assert journal.all(31337, signer(0).address) == []
            h = await mgr.submit(SINK, "0x01")  # the nonce was not consumed
            assert h.nonce == 0
        finally:
            await rpc.close()

    run(main())


def test_call_reverting_before_a_bump_is_cancelled(node: Anvil, tmp_path: Path) -> None:
    """Stuck, and meanwhile the liquidation was done by someone else: the nonce goes to a self-transfer."""
    journal = TxJournal(f"sqlite:///{tmp_path / 'j.db'}")

    async def main() -> None:
        rpc = CountingRpc(node.url)
        try:
            await setup_chain(rpc, automine=False)
            mgr = manager(rpc, journal)
            h = await mgr.submit(SINK, "0x01", purpose="liquidate")
            await mine(rpc, 20 * GWEI)  # the spike prunes it from anvil's pool
            await rpc.call("anvil_setCode", [SINK, REVERT_CODE])  # now the call reverts
            await mgr.tick()
            jt = journal.get(h.tx_id)
            assert jt.latest.kind == "cancel" and jt.tx.cancelled
            await mgr.tick(await mine(rpc))
            o = await h.wait(5)
            assert o.state == "cancelled" and "0xdeadbeef" in (o.error or "")
            tx = await rpc.call("eth_getTransactionByHash", [o.tx_hash])
            assert tx["to"].lower() == signer(0).address.lower() and tx["input"] == "0x"
        finally:
            await rpc.close()

    run(main())


def test_lane_refuses_a_key_of_another_lane(node: Anvil, tmp_path: Path) -> None:
    journal = TxJournal(f"sqlite:///{tmp_path / 'j.db'}")

    async def main() -> None:
        rpc = CountingRpc(node.url)
        try:
            await setup_chain(rpc, automine=True)
            await manager(rpc, journal, lane="liquidation").submit(SINK, "0x01")
            with pytest.raises(Exception, match="give each lane its own key"):
                await manager(rpc, journal, lane="adl").recover()
        finally:
            await rpc.close()

    run(main())


# (g) reorgs ------------------------------------------------------------------------------------------
#: A contract whose work can be done once: the first call sets slot 0, any later call reverts 0xdeadbeef.
ONCE = "0x0000000000000000000000000000000000000ace"
ONCE_CODE = "0x600054600c576001600055005b63deadbeef60e01b60005260046000fd"


async def canonical_senders(rpc: CountingRpc, sender: str) -> list[tuple[int, str]]:
    """(nonce, input) of every transaction of ``sender`` on the canonical chain."""
    out = []
    for n in range(1, int(await rpc.call("eth_blockNumber"), 16) + 1):
        blk = await rpc.call("eth_getBlockByNumber", [hex(n), True])
        out += [
            (int(t["nonce"], 16), t["input"])
            for t in blk["transactions"]
            if t["from"].lower() == sender.lower()
        ]
    return out


def test_tx_orphaned_by_a_reorg_is_rebroadcast_at_same_nonce(node: Anvil, tmp_path: Path) -> None:
    """Mined, then its block is replaced by a reorg without it: the manager sees the receipt gone and the
    block hash changed, simulates again and re-broadcasts the same bytes at the same nonce; mined again."""
    journal = TxJournal(f"sqlite:///{tmp_path / 'j.db'}")

    async def main() -> None:
        rpc = CountingRpc(node.url)
        try:
            await setup_chain(rpc, automine=False)
            await rpc.call("anvil_setCode", [ONCE, ONCE_CODE])
            mgr = manager(rpc, journal)
            h = await mgr.submit(ONCE, "0x01", purpose="liquidate")
            head = await mine(rpc)
            await mgr.tick(head)
            first = await h.wait(5)
            assert first.state == "mined" and first.block_number == head
            row = journal.get(h.tx_id).tx
            block = await rpc.call("eth_getBlockByNumber", [hex(head), False])
            assert row.mined_block_hash == block["hash"]
            for _ in range(2):  # two more blocks on top: the reorg replaces 3
                await mgr.tick(await mine(rpc))
            await rpc.call("anvil_reorg", [3, []])
            assert await rpc.call("eth_getTransactionReceipt", [h.tx_hash]) is None
            assert (await rpc.call("eth_getBlockByNumber", [hex(head), False]))["hash"] != block["hash"]
            await mgr.tick()
            assert mgr.stats["orphaned"] == 1
            again = h.reorged
            assert again is not None and not again.done() and again.nonce == h.nonce
            jt = journal.get(h.tx_id)
            assert jt.tx.state == TxState.BROADCAST and jt.tx.mined_block is None
            assert "orphaned by a reorg" in (jt.tx.error or "")
            pooled = await rpc.call("eth_getTransactionByHash", [h.tx_hash])
            assert pooled is not None and pooled["blockNumber"] is None  # the same bytes, in the pool
            await mgr.tick()  # nothing new: no second re-broadcast, no replacement
            assert mgr.stats["replacements"] == 0 and mgr.stats["orphaned"] == 1
            head2 = await mine(rpc)
            await mgr.tick(head2)
            o = await again.wait(5)
            assert o.state == "mined" and o.tx_hash == h.tx_hash and o.nonce == 0 and o.block_number == head2
            jt = journal.get(h.tx_id)
            assert len(jt.attempts) == 1 and jt.attempts[0].state == AttemptState.MINED
            blk2 = await rpc.call("eth_getBlockByNumber", [hex(head2), False])
            assert jt.tx.state == TxState.MINED and jt.tx.mined_block_hash == blk2["hash"]
            assert await canonical_senders(rpc, signer(0).address) == [(0, "0x01")]
            for _ in range(3):  # deeper and deeper: nothing more happens
                await mgr.tick(await mine(rpc))
            assert mgr.stats["orphaned"] == 1
            assert rpc.counts["eth_sendRawTransaction"] == 2
        finally:
            await rpc.close()

    run(main())


def test_tx_orphaned_after_the_work_was_done_by_someone_else_is_not_resent(
    node: Anvil, tmp_path: Path
) -> None:
    """Mined, then a reorg whose new chain holds another keeper's call doing the same work: the orphaned
    call now reverts, so it is not sent again; its nonce is taken by a self-transfer (our next nonce
    needs it) and the outcome says why."""
    journal = TxJournal(f"sqlite:///{tmp_path / 'j.db'}")

    async def main() -> None:
        rpc = CountingRpc(node.url)
        try:
            await setup_chain(rpc, automine=False)
            await rpc.call("anvil_setCode", [ONCE, ONCE_CODE])
            mgr = manager(rpc, journal)
            h = await mgr.submit(ONCE, "0x01", purpose="liquidate")
            await mgr.tick(await mine(rpc))
            assert (await h.wait(5)).state == "mined"
            h_next = await mgr.submit(SINK, "0x02", purpose="liquidate")  # nonce 1, mined after it
            await mgr.tick(await mine(rpc))
            assert (await h_next.wait(5)).state == "mined"
            rival = signer(1).sign_transaction({
                "type": 2, "chainId": 31337, "nonce": 0, "to": to_checksum_address(ONCE), "value": 0,
                "data": "0x01", "gas": 100_000, "maxFeePerGas": 10 * GWEI, "maxPriorityFeePerGas": GWEI,
            })  # fmt: skip
            await rpc.call("anvil_reorg", [2, [["0x" + rival.hex(), 0]]])
            await mgr.tick()
            assert mgr.stats["orphaned"] == 2
            first, second = h.reorged, h_next.reorged
            assert first is not None and second is not None
            sent_raw = journal.get(h.tx_id).attempts[0].raw_tx
            assert rpc.sent.count(sent_raw) == 1  # the orphaned liquidation was not sent again
            await mgr.tick(await mine(rpc))
            o1, o2 = await first.wait(5), await second.wait(5)
            assert o1.state == "cancelled" and o1.nonce == 0
            assert "orphaned by a reorg" in (o1.error or "") and "done by someone else" in (o1.error or "")
            assert "0xdeadbeef" in (o1.error or "")
            assert o2.state == "mined" and o2.nonce == 1 and o2.tx_hash == h_next.tx_hash
            me = signer(0).address
            assert await canonical_senders(rpc, me) == [(0, "0x"), (1, "0x02")]
            rows = journal.all(31337, me)
            assert [r.tx.state for r in rows] == [TxState.MINED, TxState.MINED] and rows[0].tx.cancelled
            # the work itself was done once, by the rival
            slot = await rpc.call("eth_getStorageAt", [ONCE, "0x0", "latest"])
            assert int(slot, 16) == 1
        finally:
            await rpc.close()

    run(main())


def test_orphaned_tx_is_found_by_a_restarted_manager(node: Anvil, tmp_path: Path) -> None:
    """The mined block's hash is in the journal: a manager started after a reorg (the one that saw it
    mined is gone) finds the orphan at recover() and sends it again at its nonce."""
    db = f"sqlite:///{tmp_path / 'j.db'}"

    async def main() -> None:
        rpc = CountingRpc(node.url)
        try:
            await setup_chain(rpc, automine=False)
            await rpc.call("anvil_setCode", [ONCE, ONCE_CODE])
            first = manager(rpc, TxJournal(db))
            h = await first.submit(ONCE, "0x01", purpose="liquidate")
            await first.tick(await mine(rpc))
            assert (await h.wait(5)).state == "mined"
            await rpc.call("anvil_reorg", [1, []])
            again = manager(rpc, TxJournal(db))  # a new process: only the journal is left
            await again.recover()
            assert again.stats["orphaned"] == 1 and len(again.handles()) == 1
            (h2,) = again.handles()
            await again.tick(await mine(rpc))
            o = await h2.wait(5)
            assert o.state == "mined" and o.tx_hash == h.tx_hash and o.nonce == 0
            assert await canonical_senders(rpc, signer(0).address) == [(0, "0x01")]
        finally:
            await rpc.close()

    run(main())
