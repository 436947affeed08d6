"""EIP-1559 fee arithmetic: the initial fees and the replacement bump, in integers (wei), capped.

A replacement must raise BOTH ``maxFeePerGas`` and ``maxPriorityFeePerGas`` by at least the node's
price bump (geth: 10 %, we use 12.5 % by default), computed from the highest fees already sent at that
nonce and rounded up. When the cap forbids a valid bump, :func:`bump_fees` answers None: the caller keeps
waiting instead of sending fees the node would refuse ("replacement transaction underpriced").
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

__all__ = ["Fees", "initial_fees", "bump_fees", "min_bump", "DEFAULT_BUMP_PCT"]

DEFAULT_BUMP_PCT = 12.5


@dataclass(frozen=True, order=True)
class Fees:
    max_fee: int
    priority_fee: int

    def __post_init__(self) -> None:
        if self.priority_fee < 0 or self.max_fee < 0 or self.priority_fee > self.max_fee:
            raise ValueError(f"invalid fees {self}")


def min_bump(value: int, bump_pct: float = DEFAULT_BUMP_PCT) -> int:
    """``value`` raised by ``bump_pct`` %, rounded up (exact: no float rounding)."""
    k = 1 + Fraction(str(bump_pct)) / 100
    return -((-value * k.numerator) // k.denominator)


def initial_fees(base_fee: int, priority_fee: int, cap: int, *, base_multiplier: int = 2) -> Fees:
    """``maxFee = base_multiplier × base + tip`` (room for the base fee to rise), never above ``cap``."""
    if cap <= 0:
        raise ValueError("the max fee cap must be positive")
    tip = min(max(priority_fee, 0), cap)
    max_fee = min(base_multiplier * base_fee + tip, cap)
    return Fees(max_fee, min(tip, max_fee))


def bump_fees(
    prev: Fees,
    base_fee: int,
    market_priority_fee: int,
    cap: int,
    bump_pct: float = DEFAULT_BUMP_PCT,
    *,
    base_multiplier: int = 2,
) -> Fees | None:
    """Replacement fees for a transaction last sent with ``prev`` (the highest fees sent at its nonce).

    Each field rises by at least ``bump_pct`` % (rounded up) and follows the market when it is higher
    (tip: the node's suggestion; max fee: ``base_multiplier × base + tip``); the max fee never exceeds
    ``cap``. None when the cap leaves no valid replacement (keep waiting on what was sent).
    """
    need_max = min_bump(prev.max_fee, bump_pct)
    need_tip = min_bump(prev.priority_fee, bump_pct)
    tip = max(need_tip, market_priority_fee)
    max_fee = min(max(need_max, base_multiplier * base_fee + tip), cap)
    tip = min(tip, max_fee)
    if max_fee < need_max or tip < need_tip:
        return None
    return Fees(max_fee, tip)
