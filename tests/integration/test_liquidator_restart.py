"""A keeper restarted while its liquidation transaction is still in the pool: the new process reads that
transaction's receipt once it is mined (the journal records it as mined), although it is no batch of the
new process. Crash day's drill caught the miss: a batch sent before the SIGKILL, replaced after the
restart and mined once nothing else was in flight, stayed "broadcast" in the journal."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from liquidator_support import KEEPER_KEYS, index_db, make_keeper, signer_from_env  # noqa: E402
from txm_support import SINK, SINK_CODE  # noqa: E402

pytestmark = pytest.mark.integration


def test_a_restarted_keeper_follows_the_transaction_it_recovered(
    deployed: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    dep, url = deployed.deployment, deployed.anvil.url
    engine, _ = index_db(tmp_path, dep)
    signer = signer_from_env(monkeypatch, KEEPER_KEYS[0])
    journal = tmp_path / "journal.db"

    async def scenario() -> tuple[int, int, str, str | None, str | None]:
        first = make_keeper(url, engine, dep, signer, journal)
        try:
            await first.rpc.call("anvil_setCode", [SINK, SINK_CODE])
            await first.rpc.call("evm_setAutomine", [False])
            sent = await first.txm.submit(SINK, "0x", purpose="liquidation")
        finally:
            await first.rpc.close()  # the process dies with its transaction in the pool
        again = make_keeper(url, engine, dep, signer, journal)
        try:
            await again.txm.recover()
            before = again.liquidator.in_flight  # the recovered transaction: no batch of this process
            await again.rpc.call("evm_mine", [])
            await again.liquidator.collect()
            (jt,) = again.txm.journal.all(31337, signer.address)
            return before, again.liquidator.in_flight, jt.tx.state, jt.tx.mined_tx_hash, sent.tx_hash
        finally:
            await again.rpc.call("evm_setAutomine", [True])
            await again.rpc.close()

    try:
        before, after, state, mined, sent = asyncio.run(scenario())
    finally:
        engine.dispose()
    assert before == 1 and after == 0
    assert state == "mined" and mined is not None and sent is not None and mined.lower() == sent.lower()
