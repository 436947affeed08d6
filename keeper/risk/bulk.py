"""Exact full recompute of a large book in one vectorized pass: float64 where the answer is clear, the
integer math of :mod:`keeper.risk.math` where it is not.

Per single-market account, float64 gives AV and MM, and for every threshold R (each warning line and
line + hysteresis) the sign of ``d = AV·BPS − R·MM``. The exact integers differ from the float values
by the contract's rounding (PnL floor, funding ceil, MM ceil: under one collateral unit each) plus the
float error (relative ~1e-16 per operation on the operands' magnitude). Whenever ``|d|`` exceeds the
bound ``4·BPS + 2·R + 1e-9·(BPS·|operands| + R·MM)`` — orders of magnitude above both errors — the
float sign is the exact sign; every account within that bound of any threshold (a handful in a
million) is recomputed with the exact integer functions. The tiers (hysteresis included) are then a
function of those signs and the previous tier, so the result equals :meth:`Book.rebuild` (exact path)
account for account — tested on random books in ``tests/core/test_bulk.py``.

The lines (the prices at which each threshold is crossed) are computed in float64 too: they only
select candidates for :meth:`Book.set_mark`, whose lookup interval is widened by ``LINE_MARGIN``
(1e-6, relative) — far above float64's error and above the rounding's shift of the exact flip price,
except for dust positions, which are put on the market's always-re-evaluate list instead.
Multi-market accounts go through the exact per-account path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from keeper.risk import math as rm

if TYPE_CHECKING:
    from keeper.risk.book import Book

FloatArray = npt.NDArray[np.float64]
EPS = 1e-9
USD_SCALE = 1e30


def _tiers(below: dict[int, npt.NDArray[np.bool_]], prev: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
    """Warning tiers from the lines crossed (``below[r]``: under line ``r``), climbing down from ``prev``
    one line at a time past the hysteresis, as :func:`keeper.risk.book.tier_with_hysteresis` does."""
    from keeper.risk.book import HYSTERESIS_BPS

    raw = np.zeros(len(prev), np.int8)
    for _, line in rm.WARNING_LINES_BPS:
        raw += below[line]
    t = prev.copy()
    for tier, line in rm.WARNING_LINES_BPS:
        t[(t == int(tier)) & ~below[line + HYSTERESIS_BPS]] = int(tier) - 1
    return np.maximum(t, raw)


def single_tiers(
    book: Book, m: int, sel: npt.NDArray[np.int64], prev: npt.NDArray[np.int8]
) -> tuple[npt.NDArray[np.int8], FloatArray, FloatArray, FloatArray, FloatArray]:
    """New tiers (hysteresis from ``prev``) of the single-market accounts at slots ``sel`` of market ``m``
    at its mark: float64 where the sign of every ``AV·BPS − R·MM`` is clear, the exact integers of
    :mod:`keeper.risk.math` for the accounts near a threshold. Also returns their size, entry, rest and
    |size| columns (float64)."""
    from keeper.risk.book import THRESHOLDS_BPS, tier_with_hysteresis

    bps = float(rm.BPS)
    size, entry, rest = book.col_size[sel], book.col_entry[sel], book.col_rest[sel]
    mark, mmr = float(book.marks[m]), float(book.mmr_bps[m])
    abs_size = np.abs(size)
    av = rest + size * (mark - entry) / USD_SCALE
    mm = abs_size * mark * mmr / (USD_SCALE * bps)
    mag = np.abs(rest) + abs_size * mark / USD_SCALE + abs_size * entry / USD_SCALE
    near = np.zeros(len(sel), bool)
    below = {}
    for r in THRESHOLDS_BPS:
        d = av * bps - r * mm
        tol = 4 * bps + 2 * r + EPS * (bps * mag + r * mm)
        near |= np.abs(d) <= tol
        below[r] = d < 0
    res = _tiers(below, prev)
    addr = book._addr
    for k in np.nonzero(near)[0].tolist():
        r_ = book.risk(addr[int(sel[k])])
        res[k] = int(tier_with_hysteresis(rm.WarningTier(int(prev[k])), r_.value, r_.maintenance_margin))
    return res, size, entry, rest, abs_size


def multi_boxes(
    book: Book, slots: npt.NDArray[np.int64], prev: npt.NDArray[np.int8]
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.bool_], FloatArray, FloatArray]:
    """New tiers and boxes of the multi-market accounts at ``slots`` (see :mod:`keeper.risk.book`), in
    float64: (tiers, exact, lo, hi) with lo/hi per market row. ``exact`` marks the accounts whose
    float answer is not certain (a ``d`` within the float and rounding tolerance of zero, or no margin
    left for a box): the caller computes those with the integers."""
    from keeper.risk.book import _LINE_OF, HYSTERESIS_BPS, THRESHOLDS_BPS

    bps = float(rm.BPS)
    mids = book._mids
    size, entry = book.col_msize[:, slots], book.col_mentry[:, slots]
    rest, k = book.col_rest[slots], book.col_k[slots].astype(np.float64)
    mark = np.array([float(book.marks[m]) for m in mids])[:, None]
    mmr = np.array([float(book.mmr_bps[m]) for m in mids])[:, None]
    abs_size = np.abs(size)
    av = rest + (size * (mark - entry)).sum(axis=0) / USD_SCALE
    mm = (abs_size * mark * mmr).sum(axis=0) / (USD_SCALE * bps)
    mag = np.abs(rest) + (abs_size * (mark + np.abs(entry))).sum(axis=0) / USD_SCALE
    exact = np.zeros(len(slots), bool)
    below = {}
    for r in THRESHOLDS_BPS:
        d = av * bps - r * mm
        exact |= np.abs(d) <= (k + 1) * (2 * bps + 2 * r) + EPS * (bps * mag + r * mm)
        below[r] = d < 0
    new = _tiers(below, prev)
    # boxes: the next line down (d >= 0 kept) and the own line + hysteresis (d < 0 kept)
    lines = np.array([_LINE_OF.get(i, 0) for i in range(6)], np.float64)
    down = lines[np.minimum(new.astype(np.int64) + 1, 5)]  # 0 when liquidatable: no line below
    up = np.where(new > 0, lines[new.astype(np.int64)] + HYSTERESIS_BPS, 0.0)
    lo = np.zeros(size.shape)
    hi = np.full(size.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for thr, sign in ((down, -1.0), (up, 1.0)):
            active = thr > 0
            # the margin to zero now, less (twice) the rounding of k markets (the float values against the
            # integers now, and a move's roundings), less the float error; strict "< 0" for the line up
            room: FloatArray = sign * (thr * mm - av * bps) - float(sign > 0) - 2 * k * (bps + thr) - 2
            room = room - EPS * (bps * mag + thr * mm)
            exact |= active & (room < 0)
            c = (size * bps - thr * abs_size * mmr / bps) / USD_SCALE
            reach = np.where(active & (c != 0), room / k / np.abs(c), np.inf)
            lower = (c > 0) == (sign < 0)  # d falls (may not) / rises (may not) as the price falls
            lo = np.where(lower, np.maximum(lo, mark - reach), lo)
            hi = np.where(~lower, np.minimum(hi, mark + reach), hi)
    return new, exact, lo, hi


def rebuild(book: Book) -> set[str]:
    from keeper.risk.book import (
        _TIERS,
        FLAT,
        FRAGILE_REL,
        MULTI,
        THRESHOLDS_BPS,
    )

    n = len(book._addr)
    addr = book._addr
    mk = book.col_market[:n]
    prev = book.col_tier[:n].copy()
    new = prev.copy()
    book._clear_multi()
    bps = float(rm.BPS)
    top = float(max(THRESHOLDS_BPS))
    for m, idx in book._lines.items():
        sel = np.nonzero(mk == m)[0]
        if m not in book.marks:
            idx.set_sorted(np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64))
            book._fragile[m].set_sorted(np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64))
            continue  # as the exact path: no tier, no line until the market has a mark
        res, size, entry, rest, abs_size = single_tiers(book, m, sel, prev[sel])
        mmr = float(book.mmr_bps[m])
        new[sel] = res
        book.col_version[sel] += 1
        versions = book.col_version[sel]
        # lines: liquidation_price(size, entry, rest, 0, mmr, R) in float64
        prices, owners, vers = [], [], []
        f_prices, f_owners, f_vers = [], [], []
        with np.errstate(divide="ignore"):
            band = (3 * bps + 2 * top) / (abs_size * (bps - top * mmr / bps) / USD_SCALE)
        for r in THRESHOLDS_BPS:
            num = -rest * bps * 1e26 + size * entry
            den = size * bps * bps - r * mmr * abs_size
            with np.errstate(divide="ignore", invalid="ignore"):
                root = num * bps * bps / den  # signed: negative when there is no line
            p = np.abs(root)
            ok = (num != 0) & (den != 0) & ((num > 0) == (den > 0)) & (p >= 1.0)
            fragile = (root + band > 0) & (band > FRAGILE_REL * np.maximum(root, 0.0))
            f_prices.append(np.maximum(root[fragile] + band[fragile], band[fragile] / FRAGILE_REL))
            f_owners.append(sel[fragile])
            f_vers.append(versions[fragile])
            prices.append(p[ok])
            owners.append(sel[ok])
            vers.append(versions[ok])
        idx.set_sorted(
            np.concatenate(prices), np.concatenate(owners).astype(np.int64, copy=False), np.concatenate(vers)
        )
        book._fragile[m].set_sorted(
            np.concatenate(f_prices),
            np.concatenate(f_owners).astype(np.int64, copy=False),
            np.concatenate(f_vers),
        )
    flat = mk == FLAT
    new[flat] = 0
    book.col_version[:n][flat] += 1
    changed = set()
    book.col_tier[:n] = new
    for slot in np.nonzero((new != prev) & (mk != MULTI))[0].tolist():
        a = addr[slot]
        book._objs[slot].tier = _TIERS[int(new[slot])]
        changed.add(a)
    for slot in np.nonzero(mk == MULTI)[0].tolist():
        if book._reindex(addr[slot]):
            changed.add(addr[slot])
    book.compact_boxes()
    return changed
