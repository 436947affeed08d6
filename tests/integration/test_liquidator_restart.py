"""A keeper restarted while its liquidation batch is still in the pool: the new process treats the batch's
accounts as busy (it does not plan them again) and reads the batch's receipt once it is mined (the journal
records it as mined), although the batch is not one of its own. Crash day's drill caught the second
point: a batch sent before the SIGKILL, replaced after the restart and mined once nothing else was in
flight, stayed "broadcast" in the journal."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_utils import to_checksum_address

from keeper.executor.liquidator import batch_accounts, liquidate_batch_data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from liquidator_support import KEEPER_KEYS, index_db, make_keeper, signer_from_env  # noqa: E402
from txm_support import SINK, SINK_CODE  # noqa: E402

pytestmark = pytest.mark.integration
ACCOUNTS = [to_checksum_address(f"0x{n:040x}") for n in (0xA11CE, 0xB0B)]


def test_batch_accounts_reads_back_what_liquidate_batch_data_wrote() -> None:
    assert batch_accounts(liquidate_batch_data([(ACCOUNTS[0], 0), (ACCOUNTS[1], 2)])) == ACCOUNTS
    assert batch_accounts("0x") == [] and batch_accounts("0xdeadbeef") == [] and batch_accounts("0xzz") == []


def test_a_restarted_keeper_follows_the_batch_it_recovered(
    deployed: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    dep, url = deployed.deployment, deployed.anvil.url
    engine, _ = index_db(tmp_path, dep)
    signer = signer_from_env(monkeypatch, KEEPER_KEYS[0])
    journal = tmp_path / "journal.db"
    data = liquidate_batch_data([(a, 0) for a in ACCOUNTS])  # to a sink: it accepts any call

    async def scenario() -> dict[str, Any]:
        first = make_keeper(url, engine, dep, signer, journal)
        try:
            await first.rpc.call("anvil_setCode", [SINK, SINK_CODE])
            await first.rpc.call("evm_setAutomine", [False])
            sent = await first.txm.submit(SINK, data, purpose="liquidation")
        finally:
            await first.rpc.close()  # the process dies with its batch in the pool
        again = make_keeper(url, engine, dep, signer, journal)
        try:
            await again.txm.recover()
            out = {
                "sent": sent.tx_hash,
                "in_flight": again.liquidator.in_flight,
                "busy": again.liquidator.busy(),
            }
            await again.rpc.call("evm_mine", [])
            await again.liquidator.collect()
            (jt,) = again.txm.journal.all(31337, signer.address)
            out.update(state=jt.tx.state, mined=jt.tx.mined_tx_hash)
            out.update(in_flight_after=again.liquidator.in_flight, busy_after=again.liquidator.busy())
            return out
        finally:
            await again.rpc.call("evm_setAutomine", [True])
            await again.rpc.close()

    try:
        r = asyncio.run(scenario())
    finally:
        engine.dispose()
    assert r["in_flight"] == 1 and r["busy"] == set(ACCOUNTS)  # the recovered batch: no batch of this process
    assert r["state"] == "mined" and str(r["mined"]).lower() == str(r["sent"]).lower()
    assert r["in_flight_after"] == 0 and r["busy_after"] == set()
