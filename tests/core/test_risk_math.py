"""The risk model's worked examples, checked on the keeper's pure math (the contracts' tests check the
same numbers on-chain; tests/integration checks the two agree to the wei)."""

from keeper.risk import math as rm

E18 = 10**18
USD = 10**6


def price(dollars: str) -> int:
    whole, _, cents = dollars.partition(".")
    return int(whole) * E18 + int((cents + "00")[:2]) * E18 // 100


def test_twenty_x_long_liquidation_lands_at_target() -> None:
    """Risk model: at $1,942.74 the 20x long closes ~4.0 ETH, pays ~$77.71, and lands at 150%."""
    size, entry, collateral = 10 * E18, 2000 * E18, 1000 * USD
    mark = price("1942.74")
    pos = {1: rm.PositionState(size, entry, 0)}
    risk = rm.account_risk(collateral, pos, {1: mark}, {1: 0}, {1: 200})
    assert risk.value == 427_400_000 and risk.maintenance_margin == 388_548_000
    assert risk.is_liquidatable()
    close, full = rm.liquidation_close_size(
        size, mark, risk.value, risk.maintenance_margin, 200, 15_000, 100, 100 * USD
    )
    assert not full and abs(close - 4 * E18) < E18 // 1000  # 4.0 ETH (4.000072...)
    realized = rm.pnl(close, entry, mark)
    penalty = rm.liquidation_penalty(close, mark, 100, risk.value, collateral + realized)
    assert round(penalty / USD, 2) == 77.71
    keeper, fund = rm.penalty_split(penalty)
    assert keeper + fund == penalty and abs(keeper - fund) <= 1
    rest = rm.PositionState(size - close, entry, 0)
    after = rm.account_risk(collateral + realized - penalty, {1: rest}, {1: mark}, {1: 0}, {1: 200})
    assert round(after.value / USD, 2) == 349.69 and round(after.maintenance_margin / USD, 2) == 233.13
    assert after.margin_ratio_bps == 15_000


def test_liquidation_prices_of_the_worked_examples() -> None:
    p20 = rm.liquidation_price(10 * E18, 2000 * E18, 1000 * USD, 0, 200, 11_000)
    assert abs(p20 - price("1942.74")) < E18 // 100
    p3 = rm.liquidation_price(15 * E18 // 10, 2000 * E18, 1000 * USD, 0, 200, 11_000)
    assert abs(p3 - price("1363.33")) < E18 // 100
    short = rm.liquidation_price(-10 * E18, 2000 * E18, 1000 * USD, 0, 200, 11_000)
    assert short > 2000 * E18


def test_warning_tiers_follow_the_table() -> None:
    mm = 1_000 * USD
    assert rm.warning_tier(2_000 * USD, mm) is rm.WarningTier.HEALTHY
    assert rm.warning_tier(1_999 * USD, mm) is rm.WarningTier.NOTICE
    assert rm.warning_tier(1_499 * USD, mm) is rm.WarningTier.WARNING
    assert rm.warning_tier(1_199 * USD, mm) is rm.WarningTier.DANGER
    assert rm.warning_tier(1_099 * USD, mm) is rm.WarningTier.LIQUIDATABLE
    assert rm.warning_tier(-5, mm) is rm.WarningTier.LIQUIDATABLE
    assert rm.warning_tier(0, 0) is rm.WarningTier.HEALTHY


def test_rounding_is_against_the_trader() -> None:
    assert rm.pnl(1, 3, 2) == -1  # a wei of loss rounds to a full unit lost
    assert rm.pnl(-1, 2, 3) == -1
    assert rm.funding_owed(1, 0, 1) == 1
    assert rm.funding_owed(-1, 0, 1) == 0  # receiving rounds down
    assert rm.trunc_div(-7, 2) == -3 and rm.floor_div(-7, 2) == -4 and rm.ceil_div(-7, 2) == -3
