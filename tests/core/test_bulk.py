"""The vectorized full recompute (keeper.risk.bulk) equals the exact per-account path, account for
account, on random books — accounts placed exactly on (and one unit around) every line included."""

import copy
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.risk import book as book_module
from keeper.risk import math as rm
from keeper.risk.book import THRESHOLDS_BPS, Book, tier_with_hysteresis

E18, USD = 10**18, 10**6
T = rm.WarningTier


def _book(seed: int, n: int) -> Book:
    rng = random.Random(seed)
    book = Book({0: 200, 1: 150})
    book.marks = {0: 2000 * E18 + rng.randint(0, E18), 1: 100 * E18 + rng.randint(0, E18)}
    book.funding_index = {0: rng.randint(-(10**21), 10**21), 1: 0}
    for i in range(n):
        kind = rng.random()
        positions = {}
        for m in [0, 1] if kind < 0.1 else [] if kind < 0.15 else [rng.choice([0, 1])]:
            size = rng.choice([-1, 1]) * rng.randint(1, 10**6) * E18 // 10**4
            if rng.random() < 0.02:
                size = rng.choice([-1, 1]) * rng.randint(1, 10**9)  # dust
            entry = book.marks[m] * rng.randint(90, 110) // 100
            positions[m] = rm.PositionState(size, entry, rng.randint(-(10**21), 10**21))
        notional = sum(rm.notional(p.size, book.marks[m]) for m, p in positions.items())
        collateral = notional // rng.choice([1, 2, 3, 5, 10, 20]) + rng.randint(0, 10**6)
        if len(positions) == 1 and rng.random() < 0.4:
            # exactly on a threshold (or a unit or two away): the float pass must defer to the integers
            ((m, p),) = positions.items()
            mm = rm.maintenance_margin(p.size, book.marks[m], book.mmr_bps[m])
            av = rng.choice(THRESHOLDS_BPS) * mm // rm.BPS + rng.randint(-2, 2)
            collateral = (
                av - rm.pnl(p.size, p.entry_price, book.marks[m])
                + rm.funding_owed(p.size, p.entry_funding_index, book.funding_index[m])
            )  # fmt: skip
        book.set_account(f"0x{i:040x}", collateral, positions)
        book.accounts[f"0x{i:040x}"].tier = T(rng.randint(0, 4))  # arbitrary previous tiers
        book.col_tier[book._slot[f"0x{i:040x}"]] = int(book.accounts[f"0x{i:040x}"].tier)
    return book


def _tiers(book: Book) -> dict[str, T]:
    return {a: acct.tier for a, acct in book.accounts.items()}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), moves=st.lists(st.integers(-1500, 1500), min_size=1, max_size=8))
def test_fast_rebuild_equals_exact_rebuild(seed: int, moves: list[int]) -> None:
    exact = _book(seed, 400)
    fast = copy.deepcopy(exact)
    previous = _tiers(exact)
    want = {a: tier_with_hysteresis(previous[a], *(lambda r: (r.value, r.maintenance_margin))(exact.risk(a)))
            for a in exact.accounts}  # fmt: skip
    changed_exact = exact.rebuild(fast=False)
    changed_fast = fast.rebuild(fast=True)
    assert _tiers(exact) == want
    assert _tiers(fast) == want
    assert changed_fast == changed_exact == {a for a in want if want[a] != previous[a]}
    # the line index the fast pass built finds every crossing, as the exact one does
    rng = random.Random(seed)
    for bp in moves:
        m = rng.choice([0, 1])
        price = fast.marks[m] * (10_000 + bp) // 10_000
        before = _tiers(fast)
        for b in (exact, fast):
            b.set_mark(m, price)
        brute = {}
        for a in fast.accounts:
            r = fast.risk(a)
            brute[a] = tier_with_hysteresis(before[a], r.value, r.maintenance_margin)
        assert _tiers(fast) == brute
        assert _tiers(exact) == brute


def test_fast_rebuild_used_for_large_books() -> None:
    book = _book(1, 2_500)
    before = _tiers(book)
    book.rebuild()
    for a, acct in book.accounts.items():
        r = book.risk(a)
        assert acct.tier == tier_with_hysteresis(before[a], r.value, r.maintenance_margin)


@pytest.mark.parametrize("vector_min", [1, 10**9], ids=["vectorized", "per-account"])
def test_set_mark_retier_paths_agree_with_the_integers(vector_min: int, monkeypatch: Any) -> None:
    """Book.set_mark re-tiers the crossed accounts in one float64 pass (exact near a threshold) or one by
    one: both give the exact tiers and report exactly the accounts whose tier changed."""
    monkeypatch.setattr(book_module, "VECTOR_MIN", vector_min)
    book = _book(5, 1_500)
    book.rebuild()
    rng = random.Random(5)
    for _ in range(30):
        m = rng.choice([0, 1])
        price = book.marks[m] * (10_000 + rng.randint(-900, 900)) // 10_000 + rng.randint(-3, 3)
        before = _tiers(book)
        changed = book.set_mark(m, price)
        for a, acct in book.accounts.items():
            r = book.risk(a)
            assert acct.tier == tier_with_hysteresis(before[a], r.value, r.maintenance_margin), a
            assert book.col_tier[book._slot[a]] == int(acct.tier)
        assert changed == {a for a in book.accounts if book.accounts[a].tier != before[a]}
