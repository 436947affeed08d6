"""The live book: every account's positions and collateral, with warning tiers kept current by touching
only the accounts a price move crosses.

For an account holding one market, each warning line (and each hysteresis line) is a price in that
market; these prices sit in one sorted array per market, so a move from p0 to p1 touches exactly the
accounts with a line in [p0, p1] — its cost follows the crossed accounts, not the book. A line depends
on the position and collateral, not on the mark, so a price move only re-tiers the crossed accounts
(their lines stay put).

An account holding several markets has, in market M, a crossing price given the others at their
marks — but it moves whenever another market moves. Such an account is indexed instead by a *box*: a
price interval per market it holds, inside which its tier provably cannot change whatever the other
markets do within theirs. Only the two thresholds that can change its current tier matter (the next
line down, and its own line + hysteresis up); ``d = AV·BPS − R·MM`` is linear in each price between
roundings, so its margin to zero (less the rounding's worst case) is split evenly between the k markets
and each market's interval is where its share is not used up. A move of M re-evaluates exactly the
accounts whose M interval it leaves (found by bisection on the sorted interval ends), which then get a
fresh box around the current marks; the others keep their tier, exactly. An account within rounding
reach of a threshold (no margin left) is re-evaluated on every move of its markets. Pure: no I/O; fed
from the index, checked against the chain by the reconciler.

Next to the per-account objects the book keeps one column per field of the single-market accounts
(market, size, entry, collateral − funding owed, tier, version), so that a full recompute of a large
book is one vectorized pass (:mod:`keeper.risk.bulk`, exact: float64 for the clear cases, the integer
math of :mod:`keeper.risk.math` for every account near a line).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from keeper.risk import math as rm

#: A tier improves only once the ratio is this far above its line, so a ratio hovering at a line does
#: not flip-flop (and does not spam warnings).
HYSTERESIS_BPS = 500
#: Every threshold a single-market account's tier can change at: each line, and each line + hysteresis.
THRESHOLDS_BPS: tuple[int, ...] = tuple(
    t for _, line in rm.WARNING_LINES_BPS for t in (line, line + HYSTERESIS_BPS)
)
#: Relative widening of a price move's interval when looking up crossed lines (float line prices).
LINE_MARGIN = 1e-6
#: A position whose exact line can sit further than this (relative) from its float price is re-evaluated
#: on every move of its market instead (only dust positions: a 0.001 ETH position is at ~1e-11).
FRAGILE_REL = 1e-7
#: Column market codes besides a market id.
FLAT, MULTI = -1, -2
_MM_SCALE = rm.USD_SCALE * rm.BPS
_LINES_DESC = tuple(line for _, line in reversed(rm.WARNING_LINES_BPS))
_LINE_OF = {int(t): line for t, line in rm.WARNING_LINES_BPS}
#: Below this many accounts, Book.rebuild() uses the per-account exact path (no vectorization gain).
BULK_MIN_ACCOUNTS = 2_000
#: From this many crossed accounts on, Book.set_mark re-tiers them in one vectorized exact pass.
VECTOR_MIN = 64
_TIERS = tuple(rm.WarningTier)


def _distinct(a: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Sorted distinct values (np.unique's first call imports numpy.ma: ~40 ms on a hot path)."""
    if len(a) < 2:
        return a
    x = np.sort(a)
    keep = np.empty(len(x), bool)
    keep[0] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x[keep]


def tier_with_hysteresis(previous: rm.WarningTier, account_value: int, mm: int) -> rm.WarningTier:
    """The new warning tier: worse at once on crossing a line, better only past line + hysteresis."""
    raw = rm.warning_tier(account_value, mm)
    if raw >= previous:
        return raw
    # Improving: climb one line at a time while the ratio clears that line plus the hysteresis.
    tier = previous
    for t, line in rm.WARNING_LINES_BPS:  # from liquidatable up to notice
        if t > tier:
            continue
        if t == tier and not rm.is_below(account_value, mm, line + HYSTERESIS_BPS):
            tier = rm.WarningTier(t - 1)
    return max(tier, raw)


def rounding_band(size: float, mmr_bps: float) -> float:
    """Upper bound, in price units, of |exact flip price − continuous line| of a single-market account:
    the integer rounding of AV (PnL floor, funding ceil) and MM (ceil) moves ``AV·BPS − R·MM`` by at most
    3·BPS + 2·R, and its slope in the price is at least |size|·(BPS − R·mmr/BPS)/1e30."""
    top = max(THRESHOLDS_BPS)
    slope = abs(float(size)) * (rm.BPS - top * float(mmr_bps) / rm.BPS) / 1e30
    return (3 * rm.BPS + 2 * top) / slope if slope > 0 else float("inf")


def is_fragile(band: float, root: float) -> bool:
    """True when a line's flips (within ``band`` of the continuous root ``root``, which may be negative:
    no line) reach positive prices and the band is wider than the lookup's margin can absorb."""
    return root + band > 0 and band > FRAGILE_REL * max(root, 0.0)


def fragile_reach(band: float, root: float) -> float:
    """The highest price at which a fragile line can flip (its band, or where the margin stops covering
    it: above band / FRAGILE_REL the band is within the margin)."""
    return max(root + band, band / FRAGILE_REL)


def continuous_root(size: int, entry: int, rest_value: int, mmr_bps: int, threshold: int) -> float:
    """The signed price where AV·BPS = R·MM without rounding (``rm.liquidation_price`` before its
    validity checks)."""
    num = -rest_value * rm.BPS * 10**26 + size * entry
    den = size * rm.BPS * rm.BPS - threshold * mmr_bps * abs(size)
    return num * rm.BPS * rm.BPS / den if den else float("-inf")


@dataclass
class Account:
    collateral: int = 0
    positions: dict[int, rm.PositionState] = field(default_factory=dict)
    tier: rm.WarningTier = rm.WarningTier.HEALTHY


class _LineIndex:
    """Sorted line prices of one market (numpy), with a small unsorted buffer of recent entries."""

    PENDING_MAX = 4_096

    def __init__(self) -> None:
        self.prices: npt.NDArray[np.float64] = np.empty(0, np.float64)
        self.owners: npt.NDArray[np.int64] = np.empty(0, np.int64)
        self.versions: npt.NDArray[np.int64] = np.empty(0, np.int64)
        self.pending: list[tuple[float, int, int]] = []
        #: entries added in bulk (numpy arrays), unsorted like ``pending``
        self.chunks: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
        self.chunked = 0

    def set_sorted(
        self, prices: npt.NDArray[np.float64], owners: npt.NDArray[np.int64], versions: npt.NDArray[np.int64]
    ) -> None:
        order = np.argsort(prices)  # introsort: ~10x faster than a stable sort here; ties are unordered
        self.prices, self.owners, self.versions = prices[order], owners[order], versions[order]
        self.pending = []
        self.chunks = []
        self.chunked = 0

    def add(self, price: float, owner: int, version: int) -> None:
        self.pending.append((price, owner, version))

    def add_many(
        self, prices: npt.NDArray[np.float64], owners: npt.NDArray[np.int64], versions: npt.NDArray[np.int64]
    ) -> None:
        if len(prices):
            self.chunks.append((prices, owners, versions))
            self.chunked += len(prices)

    @property
    def unsorted(self) -> int:
        return len(self.pending) + self.chunked

    def between(self, lo: float, hi: float) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(owners, versions) of the entries with a price in [lo, hi] (stale versions included)."""
        i = int(np.searchsorted(self.prices, lo, side="left"))
        j = int(np.searchsorted(self.prices, hi, side="right"))
        owners, versions = self.owners[i:j], self.versions[i:j]
        if self.pending:
            hits = [(o, v) for p, o, v in self.pending if lo <= p <= hi]
            if hits:
                owners = np.concatenate([owners, np.array([h[0] for h in hits], np.int64)])
                versions = np.concatenate([versions, np.array([h[1] for h in hits], np.int64)])
        if self.chunks:
            parts_o, parts_v = [owners], [versions]
            for p, o, v in self.chunks:
                hit = (p >= lo) & (p <= hi)
                parts_o.append(o[hit])
                parts_v.append(v[hit])
            owners, versions = np.concatenate(parts_o), np.concatenate(parts_v)
        return owners, versions

    def compact(self, current: npt.NDArray[np.int64]) -> None:
        """Merges the pending entries and drops stale ones (``current[slot]`` is the live version)."""
        ps, os_, vs = [self.prices], [self.owners], [self.versions]
        if self.pending:
            ps.append(np.array([e[0] for e in self.pending], np.float64))
            os_.append(np.array([e[1] for e in self.pending], np.int64))
            vs.append(np.array([e[2] for e in self.pending], np.int64))
        for p, o, v in self.chunks:
            ps.append(p)
            os_.append(o)
            vs.append(v)
        prices, owners, versions = np.concatenate(ps), np.concatenate(os_), np.concatenate(vs)
        live = current[owners] == versions
        self.set_sorted(prices[live], owners[live], versions[live])


class Book:
    """Accounts, marks and funding indices, with incremental warning tiers."""

    def __init__(self, mmr_bps: dict[int, int], liquidation_bps: int = 11_000) -> None:
        self.mmr_bps = dict(mmr_bps)
        self._mids = sorted(mmr_bps)  # market ids, in the row order of the multi-market columns
        self._mrow = {m: i for i, m in enumerate(self._mids)}
        self.liquidation_bps = liquidation_bps
        self.accounts: dict[str, Account] = {}
        self.marks: dict[int, int] = {}
        self.funding_index: dict[int, int] = {m: 0 for m in mmr_bps}
        self._lines: dict[int, _LineIndex] = {m: _LineIndex() for m in mmr_bps}
        #: lines whose rounding band is too wide for the lookup margin (a dust position, or a line near
        #: price 0), keyed by the highest price the band reaches: re-evaluated on any move below that
        self._fragile: dict[int, _LineIndex] = {m: _LineIndex() for m in mmr_bps}
        #: multi-market holders of each market (funding settlements re-evaluate them)
        self._multi: dict[int, set[str]] = {m: set() for m in mmr_bps}
        #: multi-market accounts' boxes: per market, the lower and upper ends of their safe interval
        self._box_lo: dict[int, _LineIndex] = {m: _LineIndex() for m in mmr_bps}
        self._box_hi: dict[int, _LineIndex] = {m: _LineIndex() for m in mmr_bps}
        #: multi-market accounts with no margin left (within rounding of a threshold): every move
        self._near: dict[int, set[str]] = {m: set() for m in mmr_bps}
        #: accounts re-evaluated by the last set_mark (crossed lines, left boxes, near): a work count
        self.last_evaluated = 0
        self._reset_columns(1024)

    # ------------------------------------------------------------------ columns

    def _reset_columns(self, capacity: int) -> None:
        self._slot: dict[str, int] = {}
        self._addr: list[str] = []
        self._objs: list[Account] = []  # the Account of each slot (hot loops skip the dict lookup)
        self.col_market = np.full(capacity, FLAT, np.int64)
        self.col_size = np.zeros(capacity, np.float64)
        self.col_entry = np.zeros(capacity, np.float64)
        self.col_rest = np.zeros(capacity, np.float64)  # collateral − funding owed
        self.col_tier = np.zeros(capacity, np.int8)
        self.col_version = np.zeros(capacity, np.int64)
        # multi-market accounts: size and entry per market (row = position in self._mids), market count
        self.col_msize = np.zeros((len(self._mids), capacity), np.float64)
        self.col_mentry = np.zeros((len(self._mids), capacity), np.float64)
        self.col_k = np.zeros(capacity, np.int64)

    def _slot_of(self, address: str, acct: Account) -> int:
        s = self._slot.get(address)
        if s is not None:
            self._objs[s] = acct
            return s
        s = len(self._addr)
        if s == len(self.col_market):
            n = 2 * s
            self.col_market = np.concatenate([self.col_market, np.full(s, FLAT, np.int64)])
            self.col_size = np.resize(self.col_size, n)
            self.col_entry = np.resize(self.col_entry, n)
            self.col_rest = np.resize(self.col_rest, n)
            self.col_tier = np.concatenate([self.col_tier, np.zeros(s, np.int8)])
            self.col_version = np.concatenate([self.col_version, np.zeros(s, np.int64)])
            self.col_msize = np.concatenate([self.col_msize, np.zeros_like(self.col_msize)], axis=1)
            self.col_mentry = np.concatenate([self.col_mentry, np.zeros_like(self.col_mentry)], axis=1)
            self.col_k = np.concatenate([self.col_k, np.zeros(s, np.int64)])
        self._slot[address] = s
        self._addr.append(address)
        self._objs.append(acct)
        return s

    def _write_columns(self, address: str, acct: Account) -> int:
        s = self._slot_of(address, acct)
        if len(acct.positions) == 1:
            ((m, pos),) = acct.positions.items()
            self.col_market[s] = m
            self.col_size[s] = float(pos.size)
            self.col_entry[s] = float(pos.entry_price)
            self.col_rest[s] = float(
                acct.collateral
                - rm.funding_owed(pos.size, pos.entry_funding_index, self.funding_index.get(m, 0))
            )
        else:
            self.col_market[s] = MULTI if acct.positions else FLAT
            self.col_k[s] = len(acct.positions)
            self.col_msize[:, s] = 0.0
            owed = 0
            for m, pos in acct.positions.items():
                row = self._mrow[m]
                self.col_msize[row, s] = float(pos.size)
                self.col_mentry[row, s] = float(pos.entry_price)
                owed += rm.funding_owed(pos.size, pos.entry_funding_index, self.funding_index.get(m, 0))
            self.col_rest[s] = float(acct.collateral - owed)
        self.col_tier[s] = int(acct.tier)
        return s

    @property
    def _versions(self) -> dict[str, int]:  # compatibility view (tests, debugging)
        return {a: int(self.col_version[s]) for a, s in self._slot.items()}

    def clear(self) -> None:
        self.accounts.clear()
        for m in self._multi:
            self._multi[m].clear()
            self._near[m].clear()
        self._lines = {m: _LineIndex() for m in self.mmr_bps}
        self._fragile = {m: _LineIndex() for m in self.mmr_bps}
        self._box_lo = {m: _LineIndex() for m in self.mmr_bps}
        self._box_hi = {m: _LineIndex() for m in self.mmr_bps}
        self._reset_columns(1024)

    # ------------------------------------------------------------------ reads

    def risk(self, address: str) -> rm.AccountRisk:
        acct = self.accounts[address]
        return rm.account_risk(acct.collateral, acct.positions, self.marks, self.funding_index, self.mmr_bps)

    def tier(self, address: str) -> rm.WarningTier:
        return self.accounts[address].tier

    def liquidation_prices(self, address: str, threshold_bps: int | None = None) -> dict[int, int]:
        """Per market held: the price at which the account reaches ``threshold_bps`` (default the
        liquidation line), other markets at their marks — as ``Exchange.liquidationPrice``; 0 if none."""
        acct = self.accounts[address]
        r = self.risk(address)
        line = threshold_bps or self.liquidation_bps
        out = {}
        for m, pos in acct.positions.items():
            mark = self.marks[m]
            rest_value = r.value - rm.pnl(pos.size, pos.entry_price, mark)
            rest_mm = r.maintenance_margin - rm.maintenance_margin(pos.size, mark, self.mmr_bps[m])
            out[m] = rm.liquidation_price(
                pos.size, pos.entry_price, rest_value, rest_mm, self.mmr_bps[m], line
            )
        return out

    def liquidatable(self) -> list[tuple[str, int]]:
        """(account, shortfall) of every liquidatable account, largest shortfall first.

        Shortfall = 110% · MM − AV in collateral units: how far below the line the account is.
        """
        out = []
        n = len(self._addr)
        for slot in np.nonzero(self.col_tier[:n] == int(rm.WarningTier.LIQUIDATABLE))[0].tolist():
            address = self._addr[slot]
            acct = self.accounts.get(address)
            if acct is None or acct.tier is not rm.WarningTier.LIQUIDATABLE:
                continue
            r = self.risk(address)
            if r.is_liquidatable(self.liquidation_bps):
                out.append((address, self.liquidation_bps * r.maintenance_margin // rm.BPS - r.value))
        out.sort(key=lambda e: -e[1])
        return out

    # ------------------------------------------------------------------ writes

    def set_account(self, address: str, collateral: int, positions: dict[int, rm.PositionState]) -> None:
        acct = self.accounts.setdefault(address, Account())
        acct.collateral = collateral
        acct.positions = {m: p for m, p in positions.items() if p.size != 0}
        self._reindex(address)

    def set_collateral(self, address: str, collateral: int) -> None:
        acct = self.accounts.setdefault(address, Account())
        acct.collateral = collateral
        self._reindex(address)

    def set_position(self, address: str, market: int, position: rm.PositionState) -> None:
        acct = self.accounts.setdefault(address, Account())
        if position.size == 0:
            acct.positions.pop(market, None)
        else:
            acct.positions[market] = position
        self._reindex(address)

    def set_funding_index(self, market: int, index: int) -> set[str]:
        """A funding settlement moves every holder's value: re-evaluates the market's accounts."""
        self.funding_index[market] = index
        holders = [a for a, acct in self.accounts.items() if market in acct.positions]
        changed = set()
        for address in holders:
            if self._reindex(address):
                changed.add(address)
        return changed

    def set_mark(self, market: int, price: int) -> set[str]:
        """Moves a mark; re-evaluates only the accounts whose lines lie in the moved interval and the
        multi-market accounts whose box the move leaves. Returns the accounts whose tier changed."""
        old = self.marks.get(market)
        self.marks[market] = price
        if old is None:
            return self.rebuild()
        single = self._crossed_slots(market, old, price)
        if len(single) >= VECTOR_MIN:
            changed = self._retier_many(market, single)
        else:
            addr = self._addr
            changed = {addr[s] for s in single.tolist() if self._retier(addr[s])}
        multi = self.left_boxes(market, old, price)
        if len(multi) >= VECTOR_MIN:
            changed |= self._reevaluate_multi(multi)
        else:
            changed |= {a for a in multi if self._reindex(a)}
        self.last_evaluated = len(single) + len(multi)
        return changed

    def left_boxes(self, market: int, old: int, new: int) -> list[str]:
        """Multi-market accounts whose interval in ``market`` does not hold ``new`` (it held ``old``),
        and those with no margin left."""
        if new == old:
            return []
        if new < old:  # a lower end above the new price: lower ends lie in (new, old]
            owners, versions = self._box_lo[market].between(
                float(new) * (1 - LINE_MARGIN), float(old) * (1 + LINE_MARGIN)
            )
        else:
            owners, versions = self._box_hi[market].between(
                float(old) * (1 - LINE_MARGIN), float(new) * (1 + LINE_MARGIN)
            )
        out = list(self._near[market])
        if len(owners):
            live = _distinct(owners[self.col_version[owners] == versions])
            addr = self._addr
            out += [addr[s] for s in live.tolist()]
        return list(dict.fromkeys(out))

    def crossed(self, market: int, old: int, new: int) -> list[str]:
        """Single-market accounts with a (current) line between two prices of ``market``."""
        addr = self._addr
        return [addr[s] for s in self._crossed_slots(market, old, new).tolist()]

    def _crossed_slots(self, market: int, old: int, new: int) -> npt.NDArray[np.int64]:
        lo, hi = (old, new) if old <= new else (new, old)
        owners, versions = self._lines[market].between(
            float(lo) * (1 - LINE_MARGIN), float(hi) * (1 + LINE_MARGIN)
        )
        fo, fv = self._fragile[market].between(float(lo) * (1 - LINE_MARGIN), float("inf"))
        if len(fo):
            owners, versions = np.concatenate([owners, fo]), np.concatenate([versions, fv])
        if not len(owners):
            return np.empty(0, np.int64)
        return _distinct(owners[self.col_version[owners] == versions])

    def rebuild(self, fast: bool | None = None) -> set[str]:
        """Full exact recompute of every account's tier and lines; returns the accounts whose tier
        changed. ``fast`` (default: from BULK_MIN_ACCOUNTS accounts on) uses the vectorized exact pass
        of :func:`keeper.risk.bulk.rebuild`; both give the same result."""
        if fast is None:
            fast = len(self.accounts) >= BULK_MIN_ACCOUNTS
        if fast:
            from keeper.risk.bulk import rebuild as bulk_rebuild

            return bulk_rebuild(self)
        changed = set()
        entries: dict[int, list[tuple[float, int, int]]] = {m: [] for m in self._lines}
        fragile: dict[int, list[tuple[float, int, int]]] = {m: [] for m in self._lines}
        self._clear_multi()
        for address in self.accounts:
            if self._reindex(address, entries, fragile):
                changed.add(address)
        self.compact_boxes()
        for m, e in fragile.items():
            self._fragile[m].set_sorted(
                np.array([x[0] for x in e], np.float64),
                np.array([x[1] for x in e], np.int64),
                np.array([x[2] for x in e], np.int64),
            )
        for m, idx in self._lines.items():
            e = entries[m]
            idx.set_sorted(
                np.array([x[0] for x in e], np.float64),
                np.array([x[1] for x in e], np.int64),
                np.array([x[2] for x in e], np.int64),
            )
        return changed

    def compact_boxes(self) -> None:
        """Merges the boxes' pending entries into their sorted arrays (after a rebuild)."""
        for idx in (*self._box_lo.values(), *self._box_hi.values()):
            idx.compact(self.col_version)

    def _clear_multi(self) -> None:
        for m in self._multi:
            self._multi[m].clear()
            self._near[m].clear()
        self._box_lo = {m: _LineIndex() for m in self.mmr_bps}
        self._box_hi = {m: _LineIndex() for m in self.mmr_bps}

    # ------------------------------------------------------------------ internals

    def _reevaluate_multi(self, addresses: list[str]) -> set[str]:
        """:meth:`_reindex` of many multi-market accounts after a move (tier and box), in one float64 pass
        (keeper.risk.bulk.multi_boxes); the accounts it cannot settle exactly go through ``_reindex``."""
        from keeper.risk.bulk import multi_boxes

        slot_of = self._slot
        slots = np.fromiter((slot_of[a] for a in addresses), np.int64, len(addresses))
        prev = self.col_tier[slots]
        new, exact, lo, hi = multi_boxes(self, slots, prev)
        fast = ~exact
        fs, ft = slots[fast], new[fast]
        self.col_tier[fs] = ft
        self.col_version[fs] += 1
        versions = self.col_version[fs]
        held = self.col_msize[:, fs] != 0
        for row, m in enumerate(self._mids):
            h = held[row]
            self._box_lo[m].add_many(lo[row][fast][h], fs[h], versions[h])
            self._box_hi[m].add_many(hi[row][fast][h], fs[h], versions[h])
        for idx in (*self._box_lo.values(), *self._box_hi.values()):
            if idx.unsorted > _LineIndex.PENDING_MAX:
                idx.compact(self.col_version)
        addr, accounts, out = self._addr, self.accounts, set()
        settled = [addr[s] for s in fs.tolist()]
        for near in self._near.values():
            near.difference_update(settled)
        for a, t in zip(settled, ft.tolist(), strict=True):
            acct = accounts[a]
            if int(acct.tier) != t:
                acct.tier = _TIERS[t]
                out.add(a)
        for s in slots[exact].tolist():
            if self._reindex(addr[s]):
                out.add(addr[s])
        return out

    def _retier_many(self, market: int, slots: npt.NDArray[np.int64]) -> set[str]:
        """:meth:`_retier` of many single-market accounts at once (keeper.risk.bulk's exact float pass)."""
        from keeper.risk.bulk import single_tiers

        slots = slots[self.col_market[slots] == market]
        prev = self.col_tier[slots]
        new, *_ = single_tiers(self, market, slots, prev)
        diff = np.nonzero(new != prev)[0]
        moved, tiers = slots[diff], new[diff]
        self.col_tier[moved] = tiers
        objs, moved_l = self._objs, moved.tolist()
        for s, t in zip(moved_l, tiers.tolist(), strict=True):
            objs[s].tier = _TIERS[t]
        addr = self._addr
        return {addr[s] for s in moved_l}

    def _retier(self, address: str) -> bool:
        """Tier only (a price move: the lines of a single-market account do not move). Inlines
        ``rm.account_risk`` + ``tier_with_hysteresis`` for one position (same integers, same result)."""
        acct = self.accounts[address]
        if len(acct.positions) != 1:
            return self._reindex(address)
        ((m, pos),) = acct.positions.items()
        mark, size = self.marks[m], pos.size
        value = (
            acct.collateral
            + size * (mark - pos.entry_price) // rm.USD_SCALE
            + (size * (pos.entry_funding_index - self.funding_index[m])) // rm.USD_SCALE
        )  # pnl floors; -ceil(x) == floor(-x) for the funding owed
        mm = -((-abs(size) * mark * self.mmr_bps[m]) // _MM_SCALE)
        previous = int(acct.tier)
        x = value * rm.BPS
        raw = 0
        for line in _LINES_DESC:  # 20000, 15000, 12000, 11000: raw = number of lines below
            if value <= 0 or x < line * mm:
                raw += 1
            else:
                break
        if raw >= previous:
            new = raw
        else:  # improve one line at a time while clear of line + hysteresis
            new = previous
            while new > raw and not (value <= 0 or x < (_LINE_OF[new] + HYSTERESIS_BPS) * mm):
                new -= 1
        if new == previous:
            return False
        acct.tier = rm.WarningTier(new)
        self.col_tier[self._slot[address]] = new
        return True

    def _reindex(
        self,
        address: str,
        bulk: dict[int, list[tuple[float, int, int]]] | None = None,
        bulk_fragile: dict[int, list[tuple[float, int, int]]] | None = None,
    ) -> bool:
        acct = self.accounts[address]
        for m in self._multi:
            self._multi[m].discard(address)
            self._near[m].discard(address)
        s = self._write_columns(address, acct)
        if any(m not in self.marks for m in acct.positions):
            return False
        r = self.risk(address)
        previous = acct.tier
        acct.tier = tier_with_hysteresis(previous, r.value, r.maintenance_margin)
        self.col_tier[s] = int(acct.tier)
        self.col_version[s] += 1
        version = int(self.col_version[s])
        if len(acct.positions) > 1:
            for m in acct.positions:
                self._multi[m].add(address)
            self._box(address, acct, r, s, version)
        elif len(acct.positions) == 1:
            ((m, pos),) = acct.positions.items()
            rest_value = r.value - rm.pnl(pos.size, pos.entry_price, self.marks[m])
            idx = self._lines[m]
            band = rounding_band(pos.size, self.mmr_bps[m])
            for threshold in THRESHOLDS_BPS:
                p = rm.liquidation_price(pos.size, pos.entry_price, rest_value, 0, self.mmr_bps[m], threshold)
                root = continuous_root(pos.size, pos.entry_price, rest_value, self.mmr_bps[m], threshold)
                if is_fragile(band, root):
                    u = fragile_reach(band, root)
                    if bulk_fragile is not None:
                        bulk_fragile[m].append((u, s, version))
                    else:
                        self._fragile[m].add(u, s, version)
                if p:
                    if bulk is not None:
                        bulk[m].append((float(p), s, version))
                    else:
                        idx.add(float(p), s, version)
            if bulk is None and idx.unsorted > _LineIndex.PENDING_MAX:
                idx.compact(self.col_version)
            if bulk is None and self._fragile[m].unsorted > _LineIndex.PENDING_MAX:
                self._fragile[m].compact(self.col_version)
        return acct.tier != previous

    def _box(self, address: str, acct: Account, r: rm.AccountRisk, slot: int, version: int) -> None:
        """Indexes a multi-market account's box (see the module docstring) around the current marks."""
        tier = int(acct.tier)
        k = len(acct.positions)
        av, mm = r.value, r.maintenance_margin
        # (threshold, allowed change of d = AV·BPS − R·MM, direction: -1 it may not fall by more, +1 rise)
        limits = []
        if tier < int(rm.WarningTier.LIQUIDATABLE):  # the next line down: d must stay >= 0
            line = _LINE_OF[tier + 1]
            limits.append((line, av * rm.BPS - line * mm - k * (rm.BPS + line) - 2, -1))
        if tier > 0:  # its own line + hysteresis: d must stay < 0
            line = _LINE_OF[tier] + HYSTERESIS_BPS
            limits.append((line, line * mm - av * rm.BPS - 1 - k * (rm.BPS + line) - 2, 1))
        if any(room < 0 for _, room, _ in limits):
            for m in acct.positions:
                self._near[m].add(address)
            return
        for m, pos in acct.positions.items():
            mark = float(self.marks[m])
            lo, hi = 0.0, float("inf")
            size, mmr = float(pos.size), float(self.mmr_bps[m])
            for line, room, direction in limits:
                # d per unit of this market's price, between roundings
                c = (size * rm.BPS - line * abs(size) * mmr / rm.BPS) / 1e30
                if c == 0:
                    continue
                reach = float(room) / k / abs(c)
                if (c > 0) == (direction < 0):  # d falls (may not) as the price falls: a lower end
                    lo = max(lo, mark - reach)
                else:
                    hi = min(hi, mark + reach)
            self._box_lo[m].add(lo, slot, version)
            self._box_hi[m].add(hi, slot, version)
            for idx in (self._box_lo[m], self._box_hi[m]):
                if idx.unsorted > _LineIndex.PENDING_MAX:
                    idx.compact(self.col_version)
