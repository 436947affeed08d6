"""The incremental book agrees with a full exact recompute after any sequence of price moves."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.risk import book as book_module
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


def _multi_book(rng: random.Random, n: int) -> Book:
    """Mostly multi-market accounts (2 or 3 markets, longs and shorts, funding owed), some dust and some
    placed within a few units of a threshold, at 1x-20x."""
    book = Book({0: 200, 1: 150, 2: 300})
    book.marks = {0: 2000 * E18, 1: 100 * E18 + rng.randint(0, E18), 2: 60_000 * E18}
    book.funding_index = {0: rng.randint(-(10**21), 10**21), 1: 0, 2: rng.randint(-(10**22), 10**22)}
    for i in range(n):
        markets = rng.sample([0, 1, 2], rng.choice([1, 2, 2, 3, 3]))
        positions = {}
        for m in markets:
            size = rng.choice([-1, 1]) * rng.randint(1, 10**6) * E18 // 10**4 * 2000 * E18 // book.marks[m]
            if rng.random() < 0.03:
                size = rng.choice([-1, 1]) * rng.randint(1, 10**9)  # dust
            entry = book.marks[m] * rng.randint(95, 105) // 100
            positions[m] = rm.PositionState(size, entry, rng.randint(-(10**21), 10**21))
        notional = sum(rm.notional(p.size, book.marks[m]) for m, p in positions.items())
        collateral = notional // rng.choice([1, 2, 3, 5, 10, 20]) + rng.randint(0, 10**6)
        book.set_account(f"0x{i:040x}", collateral, positions)
        if rng.random() < 0.2:  # a few units from a threshold
            r = book.risk(f"0x{i:040x}")
            line = rng.choice([11_000, 12_000, 15_000, 20_000, 12_500, 16_000, 20_500])
            collateral += line * r.maintenance_margin // rm.BPS - r.value + rng.randint(-3, 3)
            book.set_account(f"0x{i:040x}", collateral, positions)
    book.rebuild()
    return book


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    moves=st.lists(st.tuples(st.integers(0, 2), st.integers(-400, 400)), min_size=1, max_size=15),
)
def test_multi_market_boxes_keep_tiers_exact(seed: int, moves: list[tuple[int, int]]) -> None:
    """Accounts holding 2-3 markets (boxes, not lines): after any sequence of moves of any market, every
    tier equals the exact integer recompute with hysteresis, and only tiers that changed are reported."""
    _check_multi_moves(seed, moves)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    moves=st.lists(st.tuples(st.integers(0, 2), st.integers(-400, 400)), min_size=1, max_size=15),
)
def test_multi_market_vectorized_reevaluation_is_exact(seed: int, moves: list[tuple[int, int]]) -> None:
    """The same with every re-evaluation of multi-market accounts done by the float64 pass
    (keeper.risk.bulk.multi_boxes, integers only where the floats are not certain)."""
    saved = book_module.VECTOR_MIN
    book_module.VECTOR_MIN = 1
    try:
        _check_multi_moves(seed, moves)
    finally:
        book_module.VECTOR_MIN = saved


def _check_multi_moves(seed: int, moves: list[tuple[int, int]]) -> None:
    rng = random.Random(seed)
    book = _multi_book(rng, 150)
    for market, bp in moves:
        previous = {a: acct.tier for a, acct in book.accounts.items()}
        new_price = book.marks[market] * (10_000 + bp) // 10_000 + rng.randint(-5, 5)
        saved = dict(book.marks)
        book.marks[market] = new_price
        expected = _brute_force_tiers(book, previous)
        book.marks = saved
        changed = book.set_mark(market, new_price)
        got = {a: acct.tier for a, acct in book.accounts.items()}
        assert got == expected
        assert changed == {a for a in got if got[a] != previous[a]}
        assert {a for a, _ in book.liquidatable()} == {a for a in got if book.risk(a).is_liquidatable()}


def test_multi_market_work_follows_the_accounts_near_a_line() -> None:
    """A small move re-evaluates few multi-market accounts (those whose box it leaves), not every holder
    of the market; a large one reaches more."""
    rng = random.Random(11)
    book = Book({0: 200, 1: 200})
    book.marks = {0: 2000 * E18, 1: 100 * E18}
    for i in range(2_000):
        positions = {
            m: rm.PositionState(rng.choice([-1, 1]) * rng.randint(1, 50) * E18 // 10 * (20 if m else 1),
                                book.marks[m] * rng.randint(97, 103) // 100, 0)
            for m in (0, 1)
        }  # fmt: skip
        notional = sum(rm.notional(p.size, book.marks[m]) for m, p in positions.items())
        book.set_account(f"0x{i:040x}", notional // rng.choice([2, 3, 5, 10, 20]), positions)
    book.rebuild()
    book.set_mark(0, book.marks[0] * 10_010 // 10_000)  # +0.1%
    small = book.last_evaluated
    book.set_mark(0, book.marks[0] * 9_500 // 10_000)  # -5%
    large = book.last_evaluated
    assert small < 2_000 // 20, small
    assert large > 4 * small
