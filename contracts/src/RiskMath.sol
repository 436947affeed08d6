// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title RiskMath
/// @notice The pure integer math of Zanbara's risk model. The keeper mirrors every function here in
/// `keeper/risk/math.py`, to the wei, so the rounding of each one is part of the protocol:
/// always against the trader (requirements up, value down).
/// Units: sizes 1e18 (signed, long > 0), prices 1e18, money in collateral units (1e6 USD),
/// ratios in basis points.
library RiskMath {
    uint256 internal constant BPS = 10_000;
    /// size (1e18) * price (1e18) / USD_SCALE = collateral units (1e6)
    uint256 internal constant USD_SCALE = 1e30;
    /// Collateral units added to a partial liquidation's shortfall to absorb rounding (4e-6 USD).
    uint256 internal constant LIQUIDATION_SLACK = 4;

    error DivisionByZero();

    function abs(int256 x) internal pure returns (uint256) {
        return x >= 0 ? uint256(x) : uint256(-x);
    }

    /// @notice Floor division (towards negative infinity); Solidity's `/` truncates towards zero.
    function floorDiv(int256 a, int256 b) internal pure returns (int256) {
        if (b == 0) revert DivisionByZero();
        int256 q = a / b;
        if ((a % b != 0) && ((a < 0) != (b < 0))) q -= 1;
        return q;
    }

    /// @notice Ceiling division (towards positive infinity).
    function ceilDiv(int256 a, int256 b) internal pure returns (int256) {
        if (b == 0) revert DivisionByZero();
        int256 q = a / b;
        if ((a % b != 0) && ((a < 0) == (b < 0))) q += 1;
        return q;
    }

    function ceilDivU(uint256 a, uint256 b) internal pure returns (uint256) {
        if (b == 0) revert DivisionByZero();
        return a == 0 ? 0 : (a - 1) / b + 1;
    }

    /// @notice |size| * price in collateral units, rounded down (used for caps shown to users).
    function notional(int256 size, uint256 price) internal pure returns (uint256) {
        return (abs(size) * price) / USD_SCALE;
    }

    /// @notice |size| * price in collateral units, rounded up (used where it is a requirement or a fee).
    function notionalUp(int256 size, uint256 price) internal pure returns (uint256) {
        return ceilDivU(abs(size) * price, USD_SCALE);
    }

    /// @notice Unrealized PnL of `size` entered at `entryPrice`, at `mark`; rounded down.
    function pnl(int256 size, uint256 entryPrice, uint256 mark) internal pure returns (int256) {
        return floorDiv(size * (int256(mark) - int256(entryPrice)), int256(USD_SCALE));
    }

    /// @notice Funding a position owes since it entered at `entryIndex` (positive: it pays); rounded up.
    function fundingOwed(int256 size, int256 entryIndex, int256 index) internal pure returns (int256) {
        return ceilDiv(size * (index - entryIndex), int256(USD_SCALE));
    }

    /// @notice |size| * mark * mmr, rounded up.
    function maintenanceMargin(int256 size, uint256 mark, uint256 mmrBps) internal pure returns (uint256) {
        return ceilDivU(abs(size) * mark * mmrBps, USD_SCALE * BPS);
    }

    /// @notice Fee of `feeBps` on the notional of `size` at `price`, rounded up.
    function fee(int256 size, uint256 price, uint256 feeBps) internal pure returns (uint256) {
        return ceilDivU(abs(size) * price * feeBps, USD_SCALE * BPS);
    }

    /// @notice AV / MM in basis points, rounded down; type(uint256).max when flat, 0 when AV <= 0.
    function marginRatioBps(int256 accountValue, uint256 mm) internal pure returns (uint256) {
        if (mm == 0) return type(uint256).max;
        if (accountValue <= 0) return 0;
        return (uint256(accountValue) * BPS) / mm;
    }

    /// @notice AV / MM < thresholdBps, decided by cross-multiplication so no rounding enters it.
    function isBelow(int256 accountValue, uint256 mm, uint256 thresholdBps) internal pure returns (bool) {
        if (mm == 0) return false;
        if (accountValue <= 0) return true;
        return uint256(accountValue) * BPS < thresholdBps * mm;
    }

    /// @notice How much of a position of `size` a liquidation at `mark` closes.
    /// Partial: Δ = (Rt·MM − AV + slack) / (P·(Rt·mmr − f)), rounded up, so the account lands at the target
    /// ratio; full when MR < 100%, when Δ ≥ |size|, or when less than `minRemaining` notional would remain.
    /// @return closeAbs size to close (unsigned), full whether the whole position closes
    function liquidationCloseSize(
        int256 size,
        uint256 mark,
        int256 accountValue,
        uint256 mm,
        uint256 mmrBps,
        uint256 targetBps,
        uint256 penaltyBps,
        uint256 minRemaining
    ) internal pure returns (uint256 closeAbs, bool full) {
        uint256 absSize = abs(size);
        if (isBelow(accountValue, mm, BPS)) return (absSize, true);
        // + LIQUIDATION_SLACK: rounding against the trader elsewhere (penalty up, PnL down, MM up) must not
        // leave the account a hair under the target.
        int256 shortfall = int256(targetBps * mm) - accountValue * int256(BPS) + int256(LIQUIDATION_SLACK * BPS);
        // Rt·mmr <= f: closing frees no more margin than the penalty costs, a partial cannot reach the target.
        if (shortfall <= 0 || targetBps * mmrBps <= penaltyBps * BPS) return (absSize, true);
        uint256 k = targetBps * mmrBps - penaltyBps * BPS;
        uint256 delta = ceilDivU(uint256(shortfall) * 1e34, mark * k);
        if (delta >= absSize) return (absSize, true);
        if (((absSize - delta) * mark) / USD_SCALE < minRemaining) return (absSize, true);
        return (delta, false);
    }

    /// @notice The liquidation penalty: f of the closed notional (rounded up), never more than the
    /// account's value nor the collateral it holds, so a penalty never creates bad debt.
    function liquidationPenalty(
        uint256 closeAbs,
        uint256 mark,
        uint256 penaltyBps,
        int256 accountValue,
        int256 collateralAfterRealize
    ) internal pure returns (uint256 penalty) {
        penalty = fee(int256(closeAbs), mark, penaltyBps);
        uint256 avCap = accountValue > 0 ? uint256(accountValue) : 0;
        uint256 colCap = collateralAfterRealize > 0 ? uint256(collateralAfterRealize) : 0;
        if (penalty > avCap) penalty = avCap;
        if (penalty > colCap) penalty = colCap;
    }

    /// @notice Price of one market at which the account's ratio reaches `thresholdBps`, the other
    /// markets held where they are. `restValue` is the account value without this position's PnL;
    /// `restMm` the maintenance margin of the other positions. 0 when no positive price does it.
    /// P = ((R·M0 − A0)·1e30 + S·E) / (S − R·mmr·|S|), in integers, rounded down.
    function liquidationPrice(
        int256 size,
        uint256 entryPrice,
        int256 restValue,
        uint256 restMm,
        uint256 mmrBps,
        uint256 thresholdBps
    ) internal pure returns (uint256) {
        if (size == 0) return 0;
        int256 num = (int256(thresholdBps * restMm) - restValue * int256(BPS)) * 1e26 + size * int256(entryPrice);
        int256 den = size * int256(BPS * BPS) - int256(thresholdBps * mmrBps) * int256(abs(size));
        if (den == 0 || num == 0 || ((num > 0) != (den > 0))) return 0;
        return (abs(num) * BPS * BPS) / abs(den);
    }

    /// @notice Hourly funding rate (1e18 = 100%): maxRate · skew, skew = (L − S) / (L + S); truncated.
    function fundingRate(uint256 longSize, uint256 shortSize, uint256 maxRateWad) internal pure returns (int256) {
        uint256 total = longSize + shortSize;
        if (total == 0) return 0;
        return (int256(maxRateWad) * (int256(longSize) - int256(shortSize))) / int256(total);
    }

    /// @notice Index increment for `periods` hours at `rate` and `mark`: rate · mark per hour.
    function fundingIndexDelta(int256 rateWad, uint256 mark, uint256 periods) internal pure returns (int256) {
        return ((rateWad * int256(mark)) / 1e18) * int256(periods);
    }

    /// @notice ADL rank of a profitable position: (mark/entry)·(notional/AV) for longs, (entry/mark)·(notional/AV)
    /// for shorts, 1e18-scaled. Higher ranks are deleveraged first.
    function adlScore(int256 size, uint256 entryPrice, uint256 mark, int256 accountValue)
        internal
        pure
        returns (uint256)
    {
        if (size == 0 || accountValue <= 0 || entryPrice == 0 || mark == 0) return 0;
        uint256 n = notional(size, mark);
        uint256 priceFactor = size > 0 ? (mark * 1e18) / entryPrice : (entryPrice * 1e18) / mark;
        return (priceFactor * n) / uint256(accountValue);
    }
}
