"""The liquidator against a bad oracle (no liquidation on an untrusted market, alert + metric, resumes
when sane) and against a second keeper racing ours (each account state liquidated once, no revert)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from eth_abi import decode
from sqlalchemy import select

from keeper.devchain.simulate import make_profiles, simulate
from keeper.risk.live import calldata
from keeper.store.models import LIQUIDATIONS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from liquidator_support import (  # noqa: E402
    KEEPER_KEYS,
    index_db,
    liquidatable,
    make_keeper,
    run_indexer,
    run_keeper,
    signer_from_env,
    stop_all,
)

pytestmark = pytest.mark.integration
ETH = 1
POS_OF = "positionOf(address,uint256)"


class FakeAlerts:
    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.resolved: list[tuple[Any, str]] = []

    async def alert(self, alert: Any) -> list[Any]:
        self.sent.append(alert)
        return []

    async def resolve(self, kind: Any, subject: str = "") -> list[Any]:
        self.resolved.append((kind, subject))
        return []


async def _wait(pred: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return True
        await asyncio.sleep(0.2)
    return False


def test_untrusted_oracle_blocks_liquidations_until_sane(
    deployed: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    dep, url, w3 = deployed.deployment, deployed.anvil.url, deployed.w3
    simulate(w3, dep, "calm", traders=200, seed=5, blocks=2)
    engine, target = index_db(tmp_path, dep)
    alerts = FakeAlerts()
    k = make_keeper(
        url, engine, dep, signer_from_env(monkeypatch, KEEPER_KEYS[0]), tmp_path / "j.db", alerts=alerts
    )
    traders = [p.address for p in make_profiles(5, 200, 3, [3, 5, 10, 20])]
    eth = dep.market(ETH)
    exchange, oracle = dep.address("Exchange"), dep.address("OracleHub")
    owner = "0x" + w3.eth.call({"to": eth.primary, "data": calldata("owner()")})[-20:].hex()

    async def send(to: str, data: str) -> None:
        await k.rpc.call("anvil_impersonateAccount", [owner])
        await k.rpc.call(
            "eth_sendTransaction", [{"from": owner, "to": to, "data": data, "gas": hex(300_000)}]
        )

    async def answer(feed: str, value: int) -> None:
        await send(feed, calldata("setAnswer(int256)", ["int256"], [value]))

    async def latest(feed: str) -> int:
        raw = await k.rpc.call("eth_call", [{"to": feed, "data": calldata("latestRoundData()")}, "latest"])
        return int(decode(["uint80", "int256", "uint256", "uint256", "uint80"], bytes.fromhex(raw[2:]))[1])

    async def holders_liquidatable() -> list[str]:
        out = []
        for a in await liquidatable(k.rpc, exchange, traders):
            raw = await k.rpc.call(
                "eth_call",
                [{"to": exchange, "data": calldata(POS_OF, ["address", "uint256"], [a, ETH])}, "latest"],
            )  # fmt: skip
            if decode(["int256", "uint256", "int256"], bytes.fromhex(raw[2:]))[0] != 0:
                out.append(a)
        return out

    async def scenario() -> dict[str, Any]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(run_indexer(url, engine, target, stop))]
        tasks.append(asyncio.create_task(run_keeper(k, stop)))
        await _wait(lambda: _true(k.live.trusted.get(ETH)))
        p0, s0 = await latest(eth.primary), await latest(eth.secondary)
        # 1) primary answers zero: untrusted
        await answer(eth.primary, 0)
        zero_ok = await _wait(lambda: _true(k.live.trusted.get(ETH) is False))
        zero_reasons = k.live.quotes[ETH].verdict.reasons
        # 2) primary 30% below the secondary, and the EMA dragged down with it: the contract's median
        #    now says leveraged ETH longs are liquidatable; our guard refuses to act on it.
        await answer(eth.primary, p0 * 7 // 10)
        await k.rpc.call("evm_increaseTime", [650])
        await send(oracle, calldata("refresh(uint256)", ["uint256"], [ETH]))
        await answer(eth.secondary, s0)  # keep the secondary fresh: only the disagreement remains
        await send(oracle, calldata("refresh(uint256)", ["uint256"], [ETH]))
        for _ in range(5):
            await k.rpc.call("evm_mine", [])
            await asyncio.sleep(0.3)
        blocked = await holders_liquidatable()
        off_reasons = k.live.quotes[ETH].verdict.reasons
        sent_while_untrusted = k.liquidator.stats.sent_entries
        untrusted_metric = k.metrics.registry.get_sample_value("keeper_oracle_untrusted", {"market": "ETH"})
        # 3) sane again: the secondary agrees; liquidations resume
        await answer(eth.secondary, p0 * 7 // 10)
        resumed = await _wait(lambda: _true(k.live.trusted.get(ETH)))

        async def cleared() -> bool:
            await k.rpc.call("evm_mine", [])
            return not await holders_liquidatable() and not k.liquidator.in_flight

        done = await _wait(cleared, 30)
        await stop_all(stop, tasks)
        return locals()

    out = asyncio.run(scenario())
    assert out["zero_ok"] and any("non-positive" in r for r in out["zero_reasons"]), out["zero_reasons"]
    assert any("disagree" in r for r in out["off_reasons"]), out["off_reasons"]
    assert out["blocked"], "the bad price should make some ETH holders liquidatable on chain"
    blocked = set(out["blocked"])
    assert out["untrusted_metric"] == 1.0
    assert alerts.sent and alerts.sent[0].subject == "ETH" and alerts.resolved
    assert out["resumed"] and out["done"]
    assert k.metrics.registry.get_sample_value("keeper_oracle_untrusted", {"market": "ETH"}) == 0.0
    # nothing was sent for the ETH holders while ETH was untrusted; they were liquidated after
    with engine.connect() as conn:
        rows = conn.execute(select(LIQUIDATIONS.c.account, LIQUIDATIONS.c.block_number)).all()
    trust_back = max(b for b, m, t in k.live.stats.history if m == ETH and t)
    assert not [a for a, b in rows if a in blocked and b < trust_back]
    assert blocked <= {a for a, _ in rows}
    assert k.liquidator.stats.reverted == 0
    print(
        f"\nblocked {len(blocked)} ETH holders while untrusted; "
        f"liquidated {k.liquidator.stats.liquidated} after"
    )


async def _true(v: Any) -> bool:
    return bool(v)


def test_two_keepers_race_without_double_liquidation(deployed: Any, tmp_path: Path, monkeypatch: Any) -> None:
    dep, url, w3 = deployed.deployment, deployed.anvil.url, deployed.w3
    n = 400
    simulate(w3, dep, "calm", traders=n, seed=9, blocks=2)
    engine, target = index_db(tmp_path, dep)
    a = make_keeper(url, engine, dep, signer_from_env(monkeypatch, KEEPER_KEYS[0]), tmp_path / "ja.db")
    b = make_keeper(url, engine, dep, signer_from_env(monkeypatch, KEEPER_KEYS[1]), tmp_path / "jb.db")
    traders = [p.address for p in make_profiles(9, n, 3, [3, 5, 10, 20])]

    async def scenario() -> list[str]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(run_indexer(url, engine, target, stop))]
        await asyncio.sleep(0.8)
        tasks += [asyncio.create_task(run_keeper(k, stop)) for k in (a, b)]
        await asyncio.to_thread(simulate, w3, dep, "crash", traders=n, seed=9)

        async def cleared() -> bool:
            left = await liquidatable(a.rpc, dep.address("Exchange"), traders)
            return not left and not a.liquidator.in_flight and not b.liquidator.in_flight

        await _wait(cleared, 40)
        left = await liquidatable(a.rpc, dep.address("Exchange"), traders)
        await asyncio.sleep(1.0)
        await stop_all(stop, tasks)
        return left

    left = asyncio.run(scenario())
    assert left == []
    with engine.connect() as conn:
        rows = conn.execute(
            select(LIQUIDATIONS.c.account, LIQUIDATIONS.c.market_id, LIQUIDATIONS.c.block_number,
                   LIQUIDATIONS.c.liquidator, LIQUIDATIONS.c.account_value_before,
                   LIQUIDATIONS.c.maintenance_margin_before)
        ).all()  # fmt: skip
    # one liquidation per account state: never twice for one (account, market, block, AV before)
    per_state = Counter((r[0], r[1], r[2], int(r[4]), int(r[5])) for r in rows)
    assert rows and max(per_state.values()) == 1
    # one liquidation per position and block. Liquidation is per (account, market): an account under
    # water in two markets is rightly liquidated in both in one block, by either keeper
    per_block = Counter((r[0], r[1], r[2]) for r in rows)
    assert max(per_block.values()) == 1, "a position liquidated twice in one block"
    by = Counter(r[3] for r in rows)
    for k in (a, b):
        txs = k.txm.journal.all(31337, k.txm.sender)
        assert all(jt.tx.receipt_status == 1 for jt in txs if jt.tx.state == "mined")
        assert k.liquidator.stats.reverted == 0
    print(
        f"\nliquidations by keeper: {dict(by)}; lost races A {a.liquidator.stats.lost_race}, "
        f"B {b.liquidator.stats.lost_race}"
    )
