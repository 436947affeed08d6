"""Risk-engine benchmarks: `.venv/bin/python bench/risk.py` (options: --accounts N, --seed S).

(1) A synthetic book of N (default 1,000,000) single-market accounts, realistic sizes and leverage
    ($200–$100,000 notional, 1x–20x, entries within ±5% of the mark, ETH/BTC/SOL): build time, the
    full exact recompute (Book.rebuild: keeper.risk.bulk's float64 pass + exact integer verification
    near the lines), and the update after a 1% move of each market up and down (Book.set_mark), with the
    number of accounts whose lines the move crossed. Checks the tiers against the exact integer math
    on a sample. Targets: recompute ≤ 2 s; update ≤ 5 ms + 10 µs per crossed account.
"""

from __future__ import annotations

import argparse
import gc
import random
import time

from keeper.risk import math as rm
from keeper.risk.book import Book, tier_with_hysteresis

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    n = args.accounts
    book, t_build = build(n, args.seed)
    print(f"built {n:,} accounts in {t_build:.2f} s", flush=True)
    gc.collect()
    gc.freeze()  # a long-lived book: keep the collector from rescanning a million objects per update
    t0 = time.perf_counter()
    book.rebuild(fast=True)
    t_first = time.perf_counter() - t0
    check_sample(book, None)
    t0 = time.perf_counter()
    book.rebuild(fast=True)
    t_full = time.perf_counter() - t0
    tiers = {t: 0 for t in rm.WarningTier}
    for acct in book.accounts.values():
        tiers[acct.tier] += 1
    rows = []
    for m, (sym, _) in MARKETS.items():
        for move in (-100, 100, -100, 100):  # down 1%, back up, ...
            old = book.marks[m]
            new = old * (10_000 + move) // 10_000
            crossed = len(book.crossed(m, old, new))
            t0 = time.perf_counter()
            changed = book.set_mark(m, new)
            dt = time.perf_counter() - t0
            rows.append((sym, move, crossed, len(changed), dt, 5e-3 + 10e-6 * crossed))
    check_sample(book, {a: acct.tier for a, acct in book.accounts.items()})
    print()
    print(f"| measure ({n:,} single-market accounts) | result | target |")
    print("|---|---|---|")
    print(f"| build (set_account × {n:,}) | {t_build:.2f} s | — |")
    print(f"| full exact recompute (first, builds the line index) | {t_first:.2f} s | ≤ 2 s |")
    print(f"| full exact recompute (again) | {t_full:.2f} s | ≤ 2 s |")
    print("| tiers after recompute | " + ", ".join(f"{t.name} {c:,}" for t, c in tiers.items()) + " | |")
    for sym, move, crossed, ch, dt, target in rows:
        ok = "ok" if dt <= target else "MISSED"
        print(
            f"| update: {sym} {move / 100:+.0f}% | {dt * 1e3:.2f} ms, {crossed:,} accounts crossed, "
            f"{ch:,} tier changes | ≤ {target * 1e3:.2f} ms ({ok}) |"
        )


if __name__ == "__main__":
    main()
