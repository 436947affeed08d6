"""Our liquidation batch must have gas for every entry even when its estimate took the cheap path.

Found by the crash-day drill: another keeper's liquidation of account A sits in the pool; ours is
estimated at ``pending`` (A already settled there: ``liquidateBatch`` skips it, ~14k gas) and sent with
that small limit. Mined BEFORE the other keeper's transaction (a higher tip here; in the drill, a reorg
re-including both in another order), ours liquidates A for real and runs out of gas: a revert that is
not a lost race. The gas is now also estimated at ``latest`` (where the pooled liquidation is not
applied), and the larger estimate wins.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_abi import decode

from keeper.devchain.simulate import make_profiles, simulate
from keeper.executor.batching import batch_gas
from keeper.executor.liquidator import LIQUIDATED_TOPIC, PlannedEntry, liquidate_batch_data
from keeper.risk.live import calldata

sys.path.insert(0, str(Path(__file__).resolve().parent))
from liquidator_support import (  # noqa: E402
    KEEPER_KEYS,
    index_db,
    liquidatable,
    make_keeper,
    signer_from_env,
)

pytestmark = pytest.mark.integration
#: anvil's dev account 9 (unlocked on anvil): the other keeper
OTHER = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"


async def _victim(rpc: Any, dep: Any, traders: list[str]) -> tuple[str, int]:
    """A liquidatable account after the crash, and a market it holds."""
    exchange = dep.address("Exchange")
    victims = await liquidatable(rpc, exchange, traders)
    assert victims, "the crash made nobody liquidatable: the test proves nothing"
    account = victims[0]
    for m in dep.markets:
        pos = calldata("positionOf(address,uint256)", ["address", "uint256"], [account, m.id])
        raw = await rpc.call("eth_call", [{"to": exchange, "data": pos}, "latest"])
        if decode(["int256"], bytes.fromhex(raw[2:66]))[0] != 0:
            return account, m.id
    raise AssertionError(f"{account} is liquidatable without a position")


def test_batch_gas_covers_entries_a_pooled_rival_liquidation_settles(
    deployed: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    dep, url, w3 = deployed.deployment, deployed.anvil.url, deployed.w3
    n = 60
    simulate(w3, dep, "crash", traders=n, seed=3)
    engine, _ = index_db(tmp_path, dep)
    k = make_keeper(url, engine, dep, signer_from_env(monkeypatch, KEEPER_KEYS[0]), tmp_path / "j.db")
    exchange = dep.address("Exchange")
    traders = [p.address for p in make_profiles(3, n, 3, [3, 5, 10, 20])]

    async def scenario() -> dict[str, Any]:
        rpc = k.rpc
        account, market = await _victim(rpc, dep, traders)
        data = liquidate_batch_data([(account, market)])
        await rpc.call("evm_setAutomine", [False])
        try:
            # the other keeper's liquidation, pooled with lower fees than ours (anvil orders by max fee
            # and our manager sends 2 x base + tip): mined after ours
            base = int((await rpc.call("eth_getBlockByNumber", ["latest", False]))["baseFeePerGas"], 16)
            rival = await rpc.call("eth_sendTransaction", [{"from": OTHER, "to": exchange, "data": data,
                "gas": hex(2_000_000), "maxFeePerGas": hex(base * 3 // 2), "maxPriorityFeePerGas": "0x1"}])  # fmt: skip # noqa: E501
            cheap = int(await rpc.call("eth_estimateGas", [{"from": k.txm.sender, "to": exchange,
                                                            "data": data}, "pending"]), 16)  # fmt: skip
            sent = await k.liquidator.send([[PlannedEntry(account, market, 1, 0, False, 0, 0)]], 0)
            assert sent and k.liquidator._flights
            ours = k.liquidator._flights[0].handle.tx_hash
            await rpc.call("evm_mine", [])
        finally:
            await rpc.call("evm_setAutomine", [True])
        r_ours = await rpc.call("eth_getTransactionReceipt", [ours])
        r_rival = await rpc.call("eth_getTransactionReceipt", [rival])
        row = k.txm.journal.all(31337, k.txm.sender)[0].tx
        await rpc.close()
        return {"cheap": cheap, "ours": r_ours, "rival": r_rival, "gas_limit": row.gas_limit}

    out = asyncio.run(scenario())
    ours, rival = out["ours"], out["rival"]
    assert ours["blockNumber"] == rival["blockNumber"]
    assert int(ours["transactionIndex"], 16) < int(rival["transactionIndex"], 16), "ours must be mined first"
    used = int(ours["gasUsed"], 16)
    assert out["cheap"] < used, "the pending estimate should be the cheap skip path (else no race here)"
    assert ours["status"] == "0x1", f"our batch reverted: limit {out['gas_limit']}, used {used}"
    assert out["gas_limit"] >= used
    assert any(lg["topics"][0] == LIQUIDATED_TOPIC for lg in ours["logs"]), "ours liquidated nothing"
    assert not any(lg["topics"][0] == LIQUIDATED_TOPIC for lg in rival["logs"])
    assert used <= batch_gas(1), f"one liquidation used {used} gas: above the gas model {batch_gas(1)}"
    print(f"\npending estimate {out['cheap']} gas; limit {out['gas_limit']}; used {used}")


def test_a_mined_batch_orphaned_by_a_reorg_is_followed_to_its_resend(
    deployed: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """Our batch is mined, then a reorg drops its block: the liquidator takes back its counts, keeps the
    account busy (not planned a second time) and follows the manager's re-send until it is mined again."""
    dep, url, w3 = deployed.deployment, deployed.anvil.url, deployed.w3
    n = 40
    simulate(w3, dep, "crash", traders=n, seed=5)
    engine, _ = index_db(tmp_path, dep)
    k = make_keeper(url, engine, dep, signer_from_env(monkeypatch, KEEPER_KEYS[0]), tmp_path / "j.db")
    exchange = dep.address("Exchange")
    traders = [p.address for p in make_profiles(5, n, 3, [3, 5, 10, 20])]

    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        rpc, liq = k.rpc, k.liquidator
        account, market = await _victim(rpc, dep, traders)
        assert await liq.send([[PlannedEntry(account, market, 1, 0, False, 0, 0)]], 0)
        await liq.collect()  # automine: mined at once
        assert (liq.stats.mined_batches, liq.stats.liquidated) == (1, 1)
        first = liq.stats.liquidated_accounts[:]
        await rpc.call("evm_setAutomine", [False])  # the re-send waits in the pool until we mine
        await rpc.call("anvil_reorg", [1, []])  # the block with our batch is replaced by an empty one
        await liq.collect()
        assert liq.stats.reorged == 1
        assert (liq.stats.mined_batches, liq.stats.liquidated, liq.stats.liquidated_accounts) == (0, 0, [])
        assert account in liq.busy(), "the re-sent batch's account must not be planned again"
        pooled = await rpc.call("eth_getBlockByNumber", ["pending", False])
        assert len(pooled["transactions"]) == 1, "the manager re-broadcast the batch"
        await rpc.call("evm_setAutomine", [True])
        for _ in range(20):
            await rpc.call("evm_mine", [])
            await liq.collect()
            if liq.stats.liquidated:
                break
        assert (liq.stats.mined_batches, liq.stats.liquidated, liq.stats.liquidated_accounts) == (1, 1, first)
        assert liq.stats.lost_race == 0 and liq.stats.reverted == 0 and liq.in_flight == 0
        logs = await rpc.call("eth_getLogs", [{"address": exchange, "fromBlock": "0x0", "toBlock": "latest",
                                              "topics": [LIQUIDATED_TOPIC]}])  # fmt: skip
        await rpc.close()
        return account, logs

    account, logs = asyncio.run(scenario())
    mine = [lg for lg in logs if lg["topics"][1][-40:].lower() == account[2:].lower()]
    assert len(mine) == 1, "liquidated exactly once on the canonical chain"
