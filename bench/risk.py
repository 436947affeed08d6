"""Risk-engine benchmarks: `.venv/bin/python bench/risk.py` (options: --accounts N, --seed S, --rounds R).

(1) A synthetic book of N (default 1,000,000) single-market accounts, realistic sizes and leverage
    ($200–$100,000 notional, 1x–20x, entries within ±5% of the mark, ETH/BTC/SOL): build time, the
    full exact recompute (Book.rebuild: keeper.risk.bulk's float64 pass + exact integer verification
    near the lines), and the update after a 1% move of each market down and back up, R times
    (Book.set_mark), with the number of accounts whose lines the move crossed; wall and CPU time (the
    machine is shared), and, as the in-run baseline, the same moves re-tiering the crossed accounts one
    by one. Checks the tiers against the exact integer math on a sample. Targets: recompute ≤ 2 s;
    every update ≤ 5 ms + 10 µs per crossed account.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from keeper.errors import exit_code
from keeper.risk import book as book_module
from keeper.risk import math as rm
from keeper.risk.book import Book, tier_with_hysteresis

T = TypeVar("T")

E18 = 10**18
USD = 10**6
MARKETS = {0: ("BTC", 60_000), 1: ("ETH", 2_000), 2: ("SOL", 150)}


def build(n: int, seed: int) -> tuple[Book, float]:
    rng = random.Random(seed)
    book = Book({m: 200 for m in MARKETS})
    t0 = time.perf_counter()
    for i in range(n):
        m = rng.choice((0, 1, 1, 2))
        price = MARKETS[m][1] * E18
        notional_usd = min(100_000.0, 200 * 10 ** (rng.random() * 2.7))
        leverage = rng.choice((1, 2, 3, 3, 5, 5, 10, 10, 20))
        size = int(notional_usd / MARKETS[m][1] * E18) * (1 if rng.random() < 0.6 else -1)
        entry = price * rng.randint(9_500, 10_500) // 10_000
        collateral = int(notional_usd / leverage * USD * rng.uniform(0.9, 1.1))
        book.set_account(f"0x{i:040x}", collateral, {m: rm.PositionState(size, entry, 0)})
    for m, (_, p) in MARKETS.items():
        book.marks[m] = p * E18  # marks set last: one full recompute below, not one per account
    return book, time.perf_counter() - t0


def check_sample(book: Book, before: dict[str, rm.WarningTier] | None, k: int = 2_000) -> None:
    rng = random.Random(0)
    for a in rng.sample(list(book.accounts), min(k, len(book.accounts))):
        r = book.risk(a)
        prev = before[a] if before else rm.WarningTier.HEALTHY
        assert book.tier(a) == tier_with_hysteresis(prev, r.value, r.maintenance_margin), a


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """(result, wall seconds, this process's CPU seconds): on a shared machine the CPU time is the
    work done, the wall time adds whatever else ran."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def moves(book: Book, rounds: int) -> list[tuple[str, int, int, int, float, float]]:
    """Each market down 1% and back up, ``rounds`` times: (symbol, move bps, crossed, tier changes,
    wall s, CPU s) per update."""
    rows = []
    for m, (sym, _) in MARKETS.items():
        for move in (-100, 100) * rounds:
            old = book.marks[m]
            new = old * (10_000 + move) // 10_000
            crossed = len(book.crossed(m, old, new))
            changed, wall, cpu = timed(lambda m=m, new=new: book.set_mark(m, new))
            rows.append((sym, move, crossed, len(changed), wall, cpu))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.accounts
    book, t_build = build(n, args.seed)
    print(f"built {n:,} accounts in {t_build:.2f} s", flush=True)
    gc.collect()
    gc.freeze()  # a long-lived book: keep the collector from rescanning a million objects per update
    _, first_w, first_c = timed(lambda: book.rebuild(fast=True))
    check_sample(book, None)
    _, again_w, again_c = timed(lambda: book.rebuild(fast=True))
    tiers = {t: 0 for t in rm.WarningTier}
    for acct in book.accounts.values():
        tiers[acct.tier] += 1
    rows = moves(book, args.rounds)
    check_sample(book, {a: acct.tier for a, acct in book.accounts.items()})
    # in-run baseline: the same moves with the crossed accounts re-tiered one by one (exact integers)
    vector_min, book_module.VECTOR_MIN = book_module.VECTOR_MIN, 10**9
    base = moves(book, 1)
    book_module.VECTOR_MIN = vector_min
    check_sample(book, {a: acct.tier for a, acct in book.accounts.items()})
    print()
    print(f"| measure ({n:,} single-market accounts) | wall | CPU | target |")
    print("|---|---|---|---|")
    print(f"| build (set_account × {n:,}) | {t_build:.2f} s | | — |")
    for label, w, c in (("first, builds the line index", first_w, first_c), ("again", again_w, again_c)):
        ok = "ok" if w <= 2 else "MISSED"
        print(f"| full exact recompute ({label}) | {w:.2f} s | {c:.2f} s | ≤ 2 s ({ok}) |")
    print("| tiers after recompute | " + ", ".join(f"{t.name} {c:,}" for t, c in tiers.items()) + " | | |")
    for sym in (v[0] for v in MARKETS.values()):
        mine = [r for r in rows if r[0] == sym]
        theirs = [r for r in base if r[0] == sym]
        crossed = max(r[2] for r in mine)
        target = 5e-3 + 10e-6 * crossed
        worst_w, worst_c = max(r[4] for r in mine), max(r[5] for r in mine)
        ratio = statistics.median(r[5] for r in theirs) / statistics.median(r[5] for r in mine)
        ok = "ok" if worst_w <= target else "MISSED"
        print(
            f"| update: {sym} ±1% × {len(mine)} (≤ {crossed:,} crossed, ≤ {max(r[3] for r in mine):,} tier "
            f"changes) | median {statistics.median(r[4] for r in mine) * 1e3:.2f} ms, max {worst_w * 1e3:.2f} ms "
            f"| median {statistics.median(r[5] for r in mine) * 1e3:.2f} ms, max {worst_c * 1e3:.2f} ms "
            f"| ≤ {target * 1e3:.2f} ms ({ok}); one-by-one re-tier in the same run: "
            f"{statistics.median(r[5] for r in theirs) * 1e3:.2f} ms CPU ({ratio:.1f}×) |"
        )


if __name__ == "__main__":
    sys.exit(exit_code(main))
