"""Liquidation batches: the most urgent accounts first, as many per transaction as a block can hold.

Pure planning; the transaction manager sends what this returns through ``Exchange.liquidateBatch``,
which skips accounts that are no longer liquidatable, so a lost race costs a little gas, not a revert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    account: str
    market: int
    shortfall: int  # 110% · MM − AV, collateral units: how far below the line
    reward: int  # expected keeper reward, collateral units


@dataclass(frozen=True, slots=True)
class GasModel:
    """Gas of liquidateBatch: a fixed part plus one entry's cost (measured on the contracts)."""

    base: int = 60_000
    per_entry: int = 260_000
    #: each further entry of a batch, whose market, fund and token slots the first one warmed (measured:
    #: ~79k on average in a 2,000-trader crash; a lone cold entry uses ~264k)
    per_warm_entry: int = 130_000


def plan_batches(
    candidates: Sequence[Candidate],
    block_gas_limit: int,
    gas: GasModel = GasModel(),
    fill: float = 0.9,
    min_reward: int = 0,
    max_batches: int = 1,
) -> list[list[Candidate]]:
    """Orders by shortfall (largest first), drops those under ``min_reward`` (default 0: the protocol's
    keeper liquidates even at a loss), and packs into batches of at most ``fill`` of a block's gas."""
    eligible = sorted(
        (c for c in candidates if c.reward >= min_reward), key=lambda c: (-c.shortfall, c.account)
    )
    per_batch = max(1, int((block_gas_limit * fill - gas.base) // gas.per_entry))
    batches = [list(eligible[i : i + per_batch]) for i in range(0, len(eligible), per_batch)]
    return batches[:max_batches]


def batch_gas(n: int, gas: GasModel = GasModel()) -> int:
    return gas.base + n * gas.per_entry


def batch_gas_floor(n: int, gas: GasModel = GasModel()) -> int:
    """The least gas limit a batch of ``n`` is sent with: enough to liquidate every entry for real in any
    order (a reorg may re-include a rival's liquidation after ours), yet two full batches still fit one
    block beside the oracle updates (the cold worst case per entry, 3.3x the real cost, did not)."""
    return gas.base + gas.per_entry + max(0, n - 1) * gas.per_warm_entry if n else 0
