"""The live book: every account's positions and collateral, with warning tiers kept current by touching
only the accounts a price move crosses.

For an account holding one market, each warning line (and each hysteresis line) is a price in that
market; these prices sit in one sorted array per market, so a move from p0 to p1 touches exactly the
accounts with a line in [p0, p1] — its cost follows the crossed accounts, not the book. Accounts
holding several markets are re-evaluated on any move of one of them (their lines in one market shift
with the others). Pure: no I/O; fed from the index, checked against the chain by the reconciler.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from keeper.risk import math as rm

#: A tier improves only once the ratio is this far above its line, so a ratio hovering at a line does
#: not flip-flop (and does not spam warnings).
HYSTERESIS_BPS = 500


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


@dataclass
class Account:
    collateral: int = 0
    positions: dict[int, rm.PositionState] = field(default_factory=dict)
    tier: rm.WarningTier = rm.WarningTier.HEALTHY
    version: int = 0


@dataclass
class _LineIndex:
    """Sorted line prices of one market, with a small unsorted buffer of recent entries."""

    prices: array = field(default_factory=lambda: array("d"))
    owners: list[str] = field(default_factory=list)
    versions: array = field(default_factory=lambda: array("q"))
    pending: list[tuple[float, str, int]] = field(default_factory=list)

    def rebuild(self, entries: list[tuple[float, str, int]]) -> None:
        entries.sort(key=lambda e: e[0])
        self.prices = array("d", (e[0] for e in entries))
        self.owners = [e[1] for e in entries]
        self.versions = array("q", (e[2] for e in entries))
        self.pending = []

    def between(self, lo: float, hi: float) -> list[tuple[str, int]]:
        i, j = bisect_left(self.prices, lo), bisect_right(self.prices, hi)
        hits = [(self.owners[k], self.versions[k]) for k in range(i, j)]
        hits.extend((o, v) for p, o, v in self.pending if lo <= p <= hi)
        return hits

    def live_entries(self, current: dict[str, int]) -> list[tuple[float, str, int]]:
        out = [
            (self.prices[k], self.owners[k], self.versions[k])
            for k in range(len(self.prices))
            if current.get(self.owners[k]) == self.versions[k]
        ]
        out.extend(e for e in self.pending if current.get(e[1]) == e[2])
        return out


class Book:
    """Accounts, marks and funding indices, with incremental warning tiers."""

    def __init__(self, mmr_bps: dict[int, int], liquidation_bps: int = 11_000) -> None:
        self.mmr_bps = dict(mmr_bps)
        self.liquidation_bps = liquidation_bps
        self.accounts: dict[str, Account] = {}
        self.marks: dict[int, int] = {}
        self.funding_index: dict[int, int] = {m: 0 for m in mmr_bps}
        self._lines: dict[int, _LineIndex] = {m: _LineIndex() for m in mmr_bps}
        self._multi: dict[int, set[str]] = {m: set() for m in mmr_bps}
        self._versions: dict[str, int] = {}

    # ------------------------------------------------------------------ reads

    def risk(self, address: str) -> rm.AccountRisk:
        acct = self.accounts[address]
        return rm.account_risk(acct.collateral, acct.positions, self.marks, self.funding_index, self.mmr_bps)

    def tier(self, address: str) -> rm.WarningTier:
        return self.accounts[address].tier

    def liquidatable(self) -> list[tuple[str, int]]:
        """(account, shortfall) of every liquidatable account, largest shortfall first.

        Shortfall = 110% · MM − AV in collateral units: how far below the line the account is.
        """
        out = []
        for address, acct in self.accounts.items():
            if acct.tier is not rm.WarningTier.LIQUIDATABLE:
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
        """Moves a mark; re-evaluates only the accounts whose lines lie in the moved interval (and the
        multi-market holders of this market). Returns the accounts whose tier changed."""
        old = self.marks.get(market)
        self.marks[market] = price
        if old is None:
            return self.rebuild()
        lo, hi = (old, price) if old <= price else (price, old)
        candidates = {
            o
            for o, v in self._lines[market].between(float(lo) * 0.999999, float(hi) * 1.000001)
            if self._versions.get(o) == v
        }
        candidates |= self._multi[market]
        return {a for a in candidates if self._reindex(a)}

    def rebuild(self) -> set[str]:
        """Full exact recompute of every account's tier and lines."""
        changed = set()
        entries: dict[int, list[tuple[float, str, int]]] = {m: [] for m in self._lines}
        for m in self._multi:
            self._multi[m].clear()
        for address in self.accounts:
            if self._reindex(address, entries):
                changed.add(address)
        for m, idx in self._lines.items():
            idx.rebuild(entries[m])
        return changed

    # ------------------------------------------------------------------ internals

    def _reindex(self, address: str, bulk: dict[int, list[tuple[float, str, int]]] | None = None) -> bool:
        acct = self.accounts[address]
        for m in self._multi:
            self._multi[m].discard(address)
        if any(m not in self.marks for m in acct.positions):
            return False
        r = self.risk(address)
        previous = acct.tier
        acct.tier = tier_with_hysteresis(previous, r.value, r.maintenance_margin)
        version = self._versions.get(address, 0) + 1
        self._versions[address] = version
        if len(acct.positions) > 1:
            for m in acct.positions:
                self._multi[m].add(address)
        elif len(acct.positions) == 1:
            ((m, pos),) = acct.positions.items()
            rest_value = r.value - rm.pnl(pos.size, pos.entry_price, self.marks[m])
            target = bulk[m] if bulk is not None else self._lines[m].pending
            for _, line in rm.WARNING_LINES_BPS:
                for threshold in (line, line + HYSTERESIS_BPS):
                    p = rm.liquidation_price(
                        pos.size, pos.entry_price, rest_value, 0, self.mmr_bps[m], threshold
                    )
                    if p:
                        target.append((float(p), address, version))
            idx = self._lines[m]
            if bulk is None and len(idx.pending) > 4096 and len(idx.pending) * 8 > len(idx.prices):
                idx.rebuild(idx.live_entries(self._versions))
        return acct.tier != previous
