"""Zanbara's risk math as pure integer functions, mirroring ``contracts/src/RiskMath.sol`` to the wei.

Integers in, integers out, no I/O: every function here is tested against the contracts' own views.
Units: sizes 1e18 (signed, long > 0), prices 1e18, money in collateral units (1e6 USD), ratios in
basis points. Rounding is always against the trader, exactly as on-chain (Solidity's ``/`` truncates
towards zero; the contract's floor/ceil helpers are reproduced here explicitly).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

BPS = 10_000
USD_SCALE = 10**30
WAD = 10**18
UINT256_MAX = 2**256 - 1
LIQUIDATION_SLACK = 4  # collateral units absorbing rounding so a partial liquidation lands at target


class WarningTier(IntEnum):
    """Warning lines of the risk model, from healthy to liquidatable."""

    HEALTHY = 0
    NOTICE = 1  # MR < 200%
    WARNING = 2  # MR < 150%
    DANGER = 3  # MR < 120%
    LIQUIDATABLE = 4  # MR < 110%


WARNING_LINES_BPS: tuple[tuple[WarningTier, int], ...] = (
    (WarningTier.LIQUIDATABLE, 11_000),
    (WarningTier.DANGER, 12_000),
    (WarningTier.WARNING, 15_000),
    (WarningTier.NOTICE, 20_000),
)


def trunc_div(a: int, b: int) -> int:
    """Solidity's signed division: truncates towards zero."""
    if b == 0:
        raise ZeroDivisionError("division by zero")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def floor_div(a: int, b: int) -> int:
    return a // b


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def notional(size: int, price: int) -> int:
    """|size| · price in collateral units, rounded down."""
    return abs(size) * price // USD_SCALE


def notional_up(size: int, price: int) -> int:
    return ceil_div(abs(size) * price, USD_SCALE)


def pnl(size: int, entry_price: int, mark: int) -> int:
    """Unrealized PnL, rounded down."""
    return floor_div(size * (mark - entry_price), USD_SCALE)


def funding_owed(size: int, entry_index: int, index: int) -> int:
    """Funding a position owes since entry (positive: it pays), rounded up."""
    return ceil_div(size * (index - entry_index), USD_SCALE)


def maintenance_margin(size: int, mark: int, mmr_bps: int) -> int:
    return ceil_div(abs(size) * mark * mmr_bps, USD_SCALE * BPS)


def fee(size: int, price: int, fee_bps: int) -> int:
    return ceil_div(abs(size) * price * fee_bps, USD_SCALE * BPS)


def margin_ratio_bps(account_value: int, mm: int) -> int:
    """AV / MM in bps, rounded down; UINT256_MAX when flat, 0 when AV <= 0."""
    if mm == 0:
        return UINT256_MAX
    if account_value <= 0:
        return 0
    return account_value * BPS // mm


def is_below(account_value: int, mm: int, threshold_bps: int) -> bool:
    """AV / MM < threshold, by cross-multiplication (no rounding)."""
    if mm == 0:
        return False
    if account_value <= 0:
        return True
    return account_value * BPS < threshold_bps * mm


def warning_tier(account_value: int, mm: int) -> WarningTier:
    for tier, line in WARNING_LINES_BPS:
        if is_below(account_value, mm, line):
            return tier
    return WarningTier.HEALTHY


def liquidation_close_size(
    size: int,
    mark: int,
    account_value: int,
    mm: int,
    mmr_bps: int,
    target_bps: int,
    penalty_bps: int,
    min_remaining: int,
) -> tuple[int, bool]:
    """(size to close, full?) for a liquidation at ``mark`` — see RiskMath.liquidationCloseSize."""
    abs_size = abs(size)
    if is_below(account_value, mm, BPS):
        return abs_size, True
    shortfall = target_bps * mm - account_value * BPS + LIQUIDATION_SLACK * BPS
    # Rt·mmr <= f: closing frees no more margin than the penalty costs; a partial cannot reach the target.
    if shortfall <= 0 or target_bps * mmr_bps <= penalty_bps * BPS:
        return abs_size, True
    k = target_bps * mmr_bps - penalty_bps * BPS
    delta = ceil_div(shortfall * 10**34, mark * k)
    if delta >= abs_size:
        return abs_size, True
    if (abs_size - delta) * mark // USD_SCALE < min_remaining:
        return abs_size, True
    return delta, False


def liquidation_penalty(
    close_abs: int, mark: int, penalty_bps: int, account_value: int, collateral_after_realize: int
) -> int:
    """f of the closed notional, capped by max(AV, 0) and by the collateral actually held."""
    penalty = fee(close_abs, mark, penalty_bps)
    return min(penalty, max(account_value, 0), max(collateral_after_realize, 0))


def penalty_split(penalty: int) -> tuple[int, int]:
    """(keeper reward, insurance-fund share): half each, the odd unit to the fund."""
    keeper = penalty // 2
    return keeper, penalty - keeper


def liquidation_price(
    size: int, entry_price: int, rest_value: int, rest_mm: int, mmr_bps: int, threshold_bps: int
) -> int:
    """Price of this market at which the account reaches ``threshold_bps``, others held; 0 if none."""
    if size == 0:
        return 0
    num = (threshold_bps * rest_mm - rest_value * BPS) * 10**26 + size * entry_price
    den = size * BPS * BPS - threshold_bps * mmr_bps * abs(size)
    if den == 0 or num == 0 or (num > 0) != (den > 0):
        return 0
    return abs(num) * BPS * BPS // abs(den)


def funding_rate(long_size: int, short_size: int, max_rate_wad: int) -> int:
    total = long_size + short_size
    if total == 0:
        return 0
    return trunc_div(max_rate_wad * (long_size - short_size), total)


def funding_index_delta(rate_wad: int, mark: int, periods: int) -> int:
    return trunc_div(rate_wad * mark, WAD) * periods


def adl_score(size: int, entry_price: int, mark: int, account_value: int) -> int:
    if size == 0 or account_value <= 0 or entry_price == 0 or mark == 0:
        return 0
    n = notional(size, mark)
    price_factor = mark * WAD // entry_price if size > 0 else entry_price * WAD // mark
    return price_factor * n // account_value


def weighted_entry(old_size: int, old_entry: int, delta: int, mark: int) -> int:
    """Average entry after an increase, rounded against the trader (up for longs, down for shorts)."""
    o, d = abs(old_size), abs(delta)
    num = o * old_entry + d * mark
    return ceil_div(num, o + d) if old_size > 0 else num // (o + d)


@dataclass(frozen=True, slots=True)
class PositionState:
    size: int
    entry_price: int
    entry_funding_index: int


@dataclass(frozen=True, slots=True)
class AccountRisk:
    value: int
    maintenance_margin: int
    notional: int

    @property
    def margin_ratio_bps(self) -> int:
        return margin_ratio_bps(self.value, self.maintenance_margin)

    def is_liquidatable(self, liquidation_bps: int = 11_000) -> bool:
        return is_below(self.value, self.maintenance_margin, liquidation_bps)


def account_risk(
    collateral: int,
    positions: dict[int, PositionState],
    marks: dict[int, int],
    funding_indices: dict[int, int],
    mmr_bps: dict[int, int],
) -> AccountRisk:
    """AV, MM and notional of one account, as Exchange._snapshot computes them."""
    value, mm, total = collateral, 0, 0
    for market, pos in positions.items():
        if pos.size == 0:
            continue
        mark = marks[market]
        value += pnl(pos.size, pos.entry_price, mark) - funding_owed(
            pos.size, pos.entry_funding_index, funding_indices[market]
        )
        mm += maintenance_margin(pos.size, mark, mmr_bps[market])
        total += notional(pos.size, mark)
    return AccountRisk(value, mm, total)
