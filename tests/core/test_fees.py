"""Fee arithmetic of the transaction manager: bumps are exact, rounded up, capped, and terminate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keeper.executor.fees import Fees, bump_fees, initial_fees, min_bump

GWEI = 10**9


def test_min_bump_rounds_up_exactly() -> None:
    assert min_bump(8) == 9  # 8 × 1.125 = 9
    assert min_bump(9) == 11  # 10.125 → 11
    assert min_bump(1) == 2
    assert min_bump(0) == 0
    assert min_bump(10**30 + 1) == (10**30 + 1) * 9 // 8 + 1  # no float rounding on big values
    assert min_bump(100, 10) == 110


def test_initial_fees_follow_base_and_respect_cap() -> None:
    assert initial_fees(GWEI, 2 * GWEI, 100 * GWEI) == Fees(4 * GWEI, 2 * GWEI)
    assert initial_fees(80 * GWEI, 2 * GWEI, 100 * GWEI) == Fees(100 * GWEI, 2 * GWEI)
    assert initial_fees(GWEI, 200 * GWEI, 100 * GWEI) == Fees(100 * GWEI, 100 * GWEI)


def test_bump_raises_both_fields_by_at_least_pct() -> None:
    new = bump_fees(Fees(3 * GWEI, GWEI), base_fee=GWEI, market_priority_fee=0, cap=100 * GWEI)
    assert new == Fees(3_375_000_000, 1_125_000_000)


def test_bump_follows_the_market_when_higher() -> None:
    new = bump_fees(Fees(3 * GWEI, GWEI), base_fee=10 * GWEI, market_priority_fee=2 * GWEI, cap=100 * GWEI)
    assert new == Fees(22 * GWEI, 2 * GWEI)


def test_bump_is_capped_then_refused() -> None:
    cap = 3_200_000_000
    new = bump_fees(Fees(2_800_000_000, GWEI), base_fee=5 * GWEI, market_priority_fee=0, cap=cap)
    assert new == Fees(cap, 1_125_000_000)
    assert bump_fees(new, base_fee=5 * GWEI, market_priority_fee=0, cap=cap) is None  # keep waiting


def test_bump_refused_when_tip_cannot_rise_under_cap() -> None:
    assert bump_fees(Fees(10 * GWEI, 10 * GWEI), base_fee=0, market_priority_fee=0, cap=11 * GWEI) is None


@given(
    max_fee=st.integers(1, 10**13),
    tip_ratio=st.fractions(0, 1),
    base=st.integers(0, 10**13),
    market=st.integers(0, 10**12),
    cap=st.integers(1, 10**14),
    pct=st.sampled_from([10, 12.5, 20, 33.3]),
)
def test_bump_properties(max_fee: int, tip_ratio, base: int, market: int, cap: int, pct: float) -> None:
    tip = int(max_fee * tip_ratio)
    prev = Fees(max_fee, tip)
    new = bump_fees(prev, base, market, cap, pct)
    if new is None:
        return
    assert new.max_fee <= cap
    assert new.priority_fee <= new.max_fee
    assert new.max_fee * 1000 >= prev.max_fee * (1000 + int(pct * 10))
    assert new.priority_fee * 1000 >= prev.priority_fee * (1000 + int(pct * 10))


@given(max_fee=st.integers(1, 10**12), cap=st.integers(1, 10**13), base=st.integers(0, 10**12))
def test_repeated_bumps_terminate_at_cap(max_fee: int, cap: int, base: int) -> None:
    """No underpriced loop: a chain of bumps strictly rises and stops (None) within a bounded count."""
    fees: Fees | None = Fees(min(max_fee, cap), min(max_fee, cap) // 2)
    seen = 0
    while fees is not None:
        nxt = bump_fees(fees, base, 0, cap)
        if nxt is not None:
            assert nxt.max_fee > fees.max_fee or fees.max_fee == 0
        fees = nxt
        seen += 1
        assert seen < 400


def test_invalid_fees_refused() -> None:
    with pytest.raises(ValueError):
        Fees(1, 2)
