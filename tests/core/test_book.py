"""The incremental book agrees with a full exact recompute after any sequence of price moves."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.risk import math as rm
from keeper.risk.book import HYSTERESIS_BPS, Book, tier_with_hysteresis

E18, USD = 10**18, 10**6
T = rm.WarningTier


def _random_book(rng: random.Random, n: int) -> Book:
    book = Book({0: 200, 1: 200})
    book.marks = {0: 2000 * E18, 1: 100 * E18}
    for i in range(n):
        markets = [0] if i % 5 else [0, 1]
        positions = {}
        for m in markets:
            size = rng.choice([-1, 1]) * rng.randint(1, 50) * E18 // 10
            entry = book.marks[m] * rng.randint(95, 105) // 100
            positions[m] = rm.PositionState(size, entry, 0)
        notional = sum(rm.notional(p.size, book.marks[m]) for m, p in positions.items())
        leverage = rng.choice([2, 3, 5, 10, 20])
        book.set_account(f"0x{i:040x}", notional // leverage, positions)
    book.rebuild()
    return book


def _brute_force_tiers(book: Book, previous: dict[str, T]) -> dict[str, T]:
    out = {}
    for a in book.accounts:
        r = book.risk(a)
        out[a] = tier_with_hysteresis(previous[a], r.value, r.maintenance_margin)
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), moves=st.lists(st.integers(-800, 800), min_size=1, max_size=12))
def test_incremental_tiers_equal_full_recompute(seed: int, moves: list[int]) -> None:
    rng = random.Random(seed)
    book = _random_book(rng, 120)
    for bp in moves:
        market = rng.choice([0, 1])
        previous = {a: acct.tier for a, acct in book.accounts.items()}
        new_price = book.marks[market] * (10_000 + bp) // 10_000
        # expected: every tier computed from scratch at the new price
        saved = dict(book.marks)
        book.marks[market] = new_price
        expected = _brute_force_tiers(book, previous)
        book.marks = saved
        changed = book.set_mark(market, new_price)
        got = {a: acct.tier for a, acct in book.accounts.items()}
        assert got == expected
        assert changed == {a for a in got if got[a] != previous[a]}


def test_hysteresis_holds_a_tier_until_clear_of_the_line() -> None:
    mm = 1_000 * USD
    assert tier_with_hysteresis(T.HEALTHY, 1_490 * USD, mm) is T.WARNING
    # back just above 150%: still WARNING until 155%
    assert tier_with_hysteresis(T.WARNING, 1_510 * USD, mm) is T.WARNING
    assert tier_with_hysteresis(T.WARNING, (15_000 + HYSTERESIS_BPS) * mm // 10_000, mm) is T.NOTICE
    assert tier_with_hysteresis(T.LIQUIDATABLE, 5_000 * USD, mm) is T.HEALTHY


def test_liquidatable_ordered_by_shortfall() -> None:
    book = Book({0: 200})
    book.marks = {0: 2000 * E18}
    book.set_account("a", 1000 * USD, {0: rm.PositionState(10 * E18, 2000 * E18, 0)})
    book.set_account("b", 2000 * USD, {0: rm.PositionState(10 * E18, 2000 * E18, 0)})
    book.rebuild()
    assert book.liquidatable() == []
    book.set_mark(0, 1900 * E18)  # a: AV 0 -> far below; b: AV 1000, MM 380 -> healthy
    assert [a for a, _ in book.liquidatable()] == ["a"]
    assert book.tier("b") is T.HEALTHY
