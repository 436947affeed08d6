"""The keeper's risk math equals the contracts' own views, to the wei, on random account states.

A simulated book (200 traders across tiers and markets, funding settled so indices are non-zero) is
moved to random prices drawn by hypothesis; for every account at every drawn state, the keeper
computes AV, MM, notional, margin ratio, liquidatability, the liquidation price and the liquidation
size per position from raw state (collateral, positions, funding indices, marks) with
``keeper.risk.math``, and each must equal the contract's view in the same block.
"""

from __future__ import annotations

import time
from typing import Any

from eth_abi import decode, encode
from eth_utils import keccak
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keeper.devchain.simulate import Rpc, simulate, trader_address
from keeper.risk import math as rm

TRADERS = 200
SEED = 11
MARKETS = 3
BASE_PRICES = (60_000, 2_000, 150)
STATES_CHECKED: list[int] = []
SEEN = {"liquidatable": 0, "partial": 0, "funding": 0}


def sel(sig: str) -> str:
    return keccak(text=sig)[:4].hex()


def data(sig: str, types: list[str] | None = None, args: list[Any] | None = None) -> str:
    return "0x" + sel(sig) + (encode(types, args).hex() if types else "")


class Chain:
    def __init__(self, deployed: Any) -> None:
        self.d = deployed.deployment
        self.rpc = Rpc(deployed.anvil.url)
        self.exchange = self.d.contracts["Exchange"]
        self.oracle = self.d.contracts["OracleHub"]
        self.deployer = deployed.w3.eth.accounts[0]

    def send(self, to: str, calldata: str) -> None:
        tx = self.rpc.call(
            "eth_sendTransaction", {"from": self.deployer, "to": to, "data": calldata, "gas": hex(500_000)}
        )
        receipt = None
        for _ in range(200):
            receipt = self.rpc.call("eth_getTransactionReceipt", tx)
            if receipt:
                break
            time.sleep(0.01)
        assert receipt, f"tx {tx} not mined"
        assert receipt["status"] == "0x1", f"tx to {to} reverted"

    def set_prices(self, prices: list[int]) -> None:
        for m, price in zip(self.d.markets, prices, strict=True):
            for feed in (m.primary, m.secondary):
                self.send(feed, data("setAnswer(int256)", ["int256"], [price]))

    def calls(self, calls: list[tuple[str, str]]) -> list[bytes | None]:
        return self.rpc.eth_calls(calls)


def check_state(chain: Chain, accounts: list[str]) -> int:
    """Compares keeper math with the views for every account; returns how many accounts it checked."""
    ex, orc = chain.exchange, chain.oracle
    head = [(ex, data("params()"))]
    for m in range(MARKETS):
        head += [
            (orc, data("markPrice(uint256)", ["uint256"], [m])),
            (ex, data("marketState(uint256)", ["uint256"], [m])),
            (ex, data("market(uint256)", ["uint256"], [m])),
        ]
    out = chain.calls(head)
    params = decode(["uint256"] * 12, out[0])
    liq_bps, target_bps, penalty_bps, min_remaining = params[2], params[3], params[4], params[5]
    marks, indices, mmr = {}, {}, {}
    for m in range(MARKETS):
        marks[m] = decode(["uint256"], out[1 + 3 * m])[0]
        indices[m] = decode(["uint256"] * 4 + ["int256"], out[2 + 3 * m][: 5 * 32])[4]
        mmr[m] = decode(["(string,uint256,uint256,uint256,bool)"], out[3 + 3 * m])[0][1]

    per_account = 1 + 1 + 3 * MARKETS
    batch: list[tuple[str, str]] = []
    for a in accounts:
        batch.append((ex, data("collateralOf(address)", ["address"], [a])))
        batch.append((ex, data("accountSummary(address)", ["address"], [a])))
        for m in range(MARKETS):
            batch.append((ex, data("positionOf(address,uint256)", ["address", "uint256"], [a, m])))
            batch.append(
                (
                    ex,
                    data(
                        "liquidationPrice(address,uint256,uint256)",
                        ["address", "uint256", "uint256"],
                        [a, m, 0],
                    ),
                )
            )
            batch.append((ex, data("liquidatableSize(address,uint256)", ["address", "uint256"], [a, m])))
    res = chain.calls(batch)
    checked = 0
    for i, a in enumerate(accounts):
        r = res[i * per_account : (i + 1) * per_account]
        collateral = decode(["int256"], r[0])[0]
        summary = decode(["(int256,int256,uint256,uint256,uint256,uint8,uint256,bool)"], r[1])[0]
        positions = {}
        for m in range(MARKETS):
            size, entry, entry_idx = decode(["(int256,uint256,int256)"], r[2 + 3 * m])[0]
            if size:
                positions[m] = rm.PositionState(size, entry, entry_idx)
        if not positions:
            continue
        risk = rm.account_risk(collateral, positions, marks, indices, mmr)
        assert summary[0] == collateral
        assert (summary[1], summary[2], summary[3]) == (risk.value, risk.maintenance_margin, risk.notional), a
        assert summary[4] == risk.margin_ratio_bps, a
        assert summary[7] == risk.is_liquidatable(liq_bps), a
        for m, pos in positions.items():
            rest_value = risk.value - rm.pnl(pos.size, pos.entry_price, marks[m])
            rest_mm = risk.maintenance_margin - rm.maintenance_margin(pos.size, marks[m], mmr[m])
            want_price = rm.liquidation_price(pos.size, pos.entry_price, rest_value, rest_mm, mmr[m], liq_bps)
            assert decode(["uint256"], r[3 + 3 * m])[0] == want_price, (a, m)
            got_size = decode(["uint256", "bool"], r[4 + 3 * m])
            SEEN["funding"] += pos.entry_funding_index != indices[m]
            if risk.is_liquidatable(liq_bps):
                SEEN["liquidatable"] += 1
                SEEN["partial"] += not got_size[1]
                want = rm.liquidation_close_size(
                    pos.size,
                    marks[m],
                    risk.value,
                    risk.maintenance_margin,
                    mmr[m],
                    target_bps,
                    penalty_bps,
                    min_remaining,
                )
            else:
                want = (0, False)
            assert tuple(got_size) == want, (a, m)
        checked += 1
    return checked


def test_keeper_math_equals_contract_views(deployed: Any) -> None:
    chain = Chain(deployed)
    simulate(deployed.w3, chain.d, "calm", traders=TRADERS, seed=SEED, blocks=4, log=lambda _: None)
    # Settle one funding period on every market so positions carry non-zero pending funding.
    latest = chain.rpc.call("eth_getBlockByNumber", "latest", False)
    chain.rpc.call("evm_setNextBlockTimestamp", int(latest["timestamp"], 16) + 3_600)
    chain.set_prices([p * 10**8 for p in BASE_PRICES])
    for m in range(MARKETS):
        chain.send(chain.exchange, data("settleFunding(uint256)", ["uint256"], [m]))
    simulate(deployed.w3, chain.d, "calm", traders=TRADERS, seed=SEED, blocks=2, log=lambda _: None)
    accounts = [trader_address(SEED, i) for i in range(TRADERS)]

    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
    # Explicit examples make sure every branch is drawn whatever hypothesis picks: moderate drops put
    # accounts between 100% and 110% (partial liquidation), deep ones below 100% (full).
    @example(moves=[-600, -600, -600])
    @example(moves=[-900, -900, -900])
    @example(moves=[-1_200, -1_200, -1_200])
    @example(moves=[-3_000, -3_000, -3_000])
    @given(moves=st.lists(st.integers(min_value=-3_500, max_value=2_500), min_size=MARKETS, max_size=MARKETS))
    def at_random_prices(moves: list[int]) -> None:
        snap = chain.rpc.call("evm_snapshot")
        try:
            chain.set_prices(
                [p * 10**8 * (10_000 + bp) // 10_000 for p, bp in zip(BASE_PRICES, moves, strict=True)]
            )
            STATES_CHECKED.append(check_state(chain, accounts))
        finally:
            chain.rpc.call("evm_revert", snap)

    at_random_prices()
    assert sum(STATES_CHECKED) >= 1_000, STATES_CHECKED
    # The drawn states exercise every branch: pending funding, partial and full liquidations.
    assert SEEN["funding"] > 0 and SEEN["liquidatable"] > SEEN["partial"] > 0, SEEN
