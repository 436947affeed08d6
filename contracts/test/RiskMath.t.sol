// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Test} from "./utils/Test.sol";
import {RiskMath} from "../src/RiskMath.sol";

/// @notice External wrappers, so reverts of the internal library functions can be expected.
contract RiskMathHarness {
    function floorDiv(int256 a, int256 b) external pure returns (int256) {
        return RiskMath.floorDiv(a, b);
    }

    function ceilDiv(int256 a, int256 b) external pure returns (int256) {
        return RiskMath.ceilDiv(a, b);
    }

    function ceilDivU(uint256 a, uint256 b) external pure returns (uint256) {
        return RiskMath.ceilDivU(a, b);
    }

    function liquidationCloseSize(
        int256 size,
        uint256 mark,
        int256 av,
        uint256 mm,
        uint256 mmrBps,
        uint256 targetBps,
        uint256 penaltyBps,
        uint256 minRemaining
    ) external pure returns (uint256, bool) {
        return RiskMath.liquidationCloseSize(size, mark, av, mm, mmrBps, targetBps, penaltyBps, minRemaining);
    }
}

/// @notice The pure math the keeper mirrors to the wei: signs and rounding of every function.
contract RiskMathTest is Test {
    RiskMathHarness internal h;

    function setUp() public {
        h = new RiskMathHarness();
    }

    // ------------------------------------------------------------------ divisions

    function test_floorDiv_signs() public view {
        assertEq(h.floorDiv(7, 2), 3);
        assertEq(h.floorDiv(-7, 2), -4);
        assertEq(h.floorDiv(7, -2), -4);
        assertEq(h.floorDiv(-7, -2), 3);
        assertEq(h.floorDiv(6, 3), 2);
        assertEq(h.floorDiv(-6, 3), -2);
        assertEq(h.floorDiv(6, -3), -2);
        assertEq(h.floorDiv(0, -5), 0);
        assertEq(h.floorDiv(-1, 1e30), -1);
    }

    function test_ceilDiv_signs() public view {
        assertEq(h.ceilDiv(7, 2), 4);
        assertEq(h.ceilDiv(-7, 2), -3);
        assertEq(h.ceilDiv(7, -2), -3);
        assertEq(h.ceilDiv(-7, -2), 4);
        assertEq(h.ceilDiv(6, 3), 2);
        assertEq(h.ceilDiv(-6, 3), -2);
        assertEq(h.ceilDiv(0, 5), 0);
        assertEq(h.ceilDiv(1, 1e30), 1);
        assertEq(h.ceilDiv(-1, 1e30), 0);
    }

    function test_ceilDivU() public view {
        assertEq(h.ceilDivU(0, 3), 0);
        assertEq(h.ceilDivU(1, 3), 1);
        assertEq(h.ceilDivU(3, 3), 1);
        assertEq(h.ceilDivU(4, 3), 2);
        assertEq(h.ceilDivU(type(uint256).max, 1), type(uint256).max);
    }

    function test_divisionByZero_reverts() public {
        vm.expectRevert(RiskMath.DivisionByZero.selector);
        h.floorDiv(1, 0);
        vm.expectRevert(RiskMath.DivisionByZero.selector);
        h.ceilDiv(1, 0);
        vm.expectRevert(RiskMath.DivisionByZero.selector);
        h.ceilDivU(1, 0);
        vm.expectRevert(RiskMath.DivisionByZero.selector);
        h.ceilDivU(0, 0);
    }

    function testFuzz_floorAndCeil_bracketTheQuotient(int128 a128, int128 b128) public pure {
        int256 a = a128;
        int256 b = b128;
        vm.assume(b != 0);
        int256 f = RiskMath.floorDiv(a, b);
        int256 c = RiskMath.ceilDiv(a, b);
        if (b > 0) {
            assertLe(f * b, a, "floor * b <= a");
            assertGt((f + 1) * b, a, "(floor+1) * b > a");
            assertGe(c * b, a, "ceil * b >= a");
            assertLt((c - 1) * b, a, "(ceil-1) * b < a");
        } else {
            assertGe(f * b, a, "floor * b >= a (b < 0)");
            assertLt((f + 1) * b, a, "(floor+1) * b < a (b < 0)");
            assertLe(c * b, a, "ceil * b <= a (b < 0)");
            assertGt((c - 1) * b, a, "(ceil-1) * b > a (b < 0)");
        }
        assertEq(c, a % b == 0 ? f : f + 1, "ceil = floor + (remainder != 0)");
        assertEq(c, -RiskMath.floorDiv(-a, b), "ceil(a/b) = -floor(-a/b)");
    }

    // ------------------------------------------------------------------ amounts, rounding against the trader

    function test_pnl_roundsDown() public pure {
        assertEq(RiskMath.pnl(10e18, 2_000e18, 1_942.74e18), -572.6e6);
        assertEq(RiskMath.pnl(-10e18, 2_000e18, 1_942.74e18), 572.6e6);
        assertEq(RiskMath.pnl(1, 2_000e18, 1_999e18), -1, "a hair of a loss is a whole unit");
        assertEq(RiskMath.pnl(1, 1_999e18, 2_000e18), 0, "a hair of a profit is nothing");
        assertEq(RiskMath.pnl(0, 1, 2), 0);
    }

    function test_fundingOwed_roundsUp() public pure {
        assertEq(RiskMath.fundingOwed(10e18, 0, 66_666_666_666_666_000), 666_667, "payer pays up");
        assertEq(RiskMath.fundingOwed(-5e18, 0, 66_666_666_666_666_000), -333_333, "receiver gets down");
        assertEq(RiskMath.fundingOwed(1, 0, 1), 1);
        assertEq(RiskMath.fundingOwed(-1, 0, 1), 0);
        assertEq(RiskMath.fundingOwed(10e18, 5, 5), 0);
    }

    function test_margin_fee_notional_rounding() public pure {
        assertEq(RiskMath.maintenanceMargin(10e18, 1_942.74e18, 200), 388.548e6);
        assertEq(RiskMath.maintenanceMargin(-1, 2_000e18, 200), 1, "MM rounds up");
        assertEq(RiskMath.fee(10e18, 2_000e18, 6), 12e6);
        assertEq(RiskMath.fee(-1, 2_000e18, 6), 1, "fee rounds up");
        assertEq(RiskMath.notional(1, 2_000e18), 0, "cap notional rounds down");
        assertEq(RiskMath.notionalUp(1, 2_000e18), 1, "required notional rounds up");
        assertEq(RiskMath.notional(-2.5e18, 2_000e18), 5_000e6);
        assertEq(RiskMath.abs(type(int256).max), uint256(type(int256).max));
    }

    function test_marginRatio_and_isBelow() public pure {
        assertEq(RiskMath.marginRatioBps(1_000e6, 400e6), 25_000);
        assertEq(RiskMath.marginRatioBps(1_000e6, 0), type(uint256).max, "flat: infinite");
        assertEq(RiskMath.marginRatioBps(0, 400e6), 0);
        assertEq(RiskMath.marginRatioBps(-5, 400e6), 0);
        assertEq(RiskMath.marginRatioBps(439_999_999, 400e6), 10_999, "rounded down");
        assertTrue(RiskMath.isBelow(439_999_999, 400e6, 11_000));
        assertFalse(RiskMath.isBelow(440e6, 400e6, 11_000), "exactly at the line is not below");
        assertFalse(RiskMath.isBelow(-1, 0, 11_000), "flat is never below");
        assertTrue(RiskMath.isBelow(0, 1, 11_000));
        assertTrue(RiskMath.isBelow(-1, 1, 11_000));
    }

    // ------------------------------------------------------------------ liquidation size

    function test_closeSize_workedExample() public view {
        (uint256 d, bool full) = h.liquidationCloseSize(10e18, 1_942.74e18, 427.4e6, 388.548e6, 200, 15_000, 100, 100e6);
        assertFalse(full);
        assertEq(d, 4_000_072_166_115_898_165);
        // the same for a short (size sign does not enter the amount)
        (uint256 d2, bool full2) =
            h.liquidationCloseSize(-10e18, 1_942.74e18, 427.4e6, 388.548e6, 200, 15_000, 100, 100e6);
        assertFalse(full2);
        assertEq(d2, d);
    }

    function test_closeSize_fullBelowOneHundredPercent() public view {
        (uint256 d, bool full) = h.liquidationCloseSize(10e18, 1_930e18, 300e6, 386e6, 200, 15_000, 100, 100e6);
        assertTrue(full);
        assertEq(d, 10e18);
        (d, full) = h.liquidationCloseSize(-3e18, 1_930e18, -1, 386e6, 200, 15_000, 100, 100e6);
        assertTrue(full, "negative AV");
        assertEq(d, 3e18);
        // exactly 100% is not below 100%: partial
        (, full) = h.liquidationCloseSize(10e18, 1_930e18, 386e6, 386e6, 200, 15_000, 100, 0);
        assertFalse(full, "MR exactly 100% -> partial");
    }

    function test_closeSize_fullWhenDeltaCoversThePosition() public view {
        // penalty 2.5%: k = 1.5·2% − 2.5% = 0.5%, Δ/S = (1.5 − 1.05)·4 = 1.8 > 1
        (uint256 d, bool full) = h.liquidationCloseSize(1e18, 2_000e18, 42e6, 40e6, 200, 15_000, 250, 0);
        assertTrue(full);
        assertEq(d, 1e18);
    }

    function test_closeSize_fullWhenRemainderUnderMinimum() public view {
        // 0.08 ETH at 1942.74, AV 3.4192, MM 3.108384: Δ ≈ 0.032 leaves ≈ 93 < 100
        (uint256 d, bool full) =
            h.liquidationCloseSize(0.08e18, 1_942.74e18, 3.4192e6, 3.108384e6, 200, 15_000, 100, 100e6);
        assertTrue(full);
        assertEq(d, 0.08e18);
        // without the minimum: partial
        (d, full) = h.liquidationCloseSize(0.08e18, 1_942.74e18, 3.4192e6, 3.108384e6, 200, 15_000, 100, 0);
        assertFalse(full);
        assertLt(d, 0.04e18, "about 0.032");
    }

    function test_closeSize_fullWhenPartialCannotHelp() public view {
        // k = 1.5·2% − 3% = 0: closing frees no more margin than the penalty costs
        (uint256 d, bool full) = h.liquidationCloseSize(10e18, 1_942.74e18, 427.4e6, 388.548e6, 200, 15_000, 300, 0);
        assertTrue(full);
        assertEq(d, 10e18);
    }

    /// k < 0 (Rt·mmr below the penalty rate, e.g. a 0.5% mmr market, or a 4% penalty): a partial close can
    /// never reach the target, so the whole position closes — the function must not underflow.
    function test_closeSize_negativeK_fullCloseNotRevert() public view {
        // mmr 0.5%: 1.5 · 0.5% = 0.75% < 1% penalty
        (uint256 d, bool full) = h.liquidationCloseSize(10e18, 1_942.74e18, 104e6, 97.137e6, 50, 15_000, 100, 0);
        assertTrue(full, "mmr 50 bps");
        assertEq(d, 10e18);
        (d, full) = h.liquidationCloseSize(10e18, 1_942.74e18, 427.4e6, 388.548e6, 200, 15_000, 400, 0);
        assertTrue(full, "penalty 4%");
        assertEq(d, 10e18);
    }

    // ------------------------------------------------------------------ penalty

    function test_penalty_caps() public pure {
        assertEq(RiskMath.liquidationPenalty(4e18, 2_000e18, 100, 1_000e6, 1_000e6), 80e6, "1% of notional");
        assertEq(RiskMath.liquidationPenalty(1, 2_000e18, 100, 1_000e6, 1_000e6), 1, "rounded up");
        assertEq(RiskMath.liquidationPenalty(10e18, 1_905e18, 100, 50e6, 50e6), 50e6, "capped by AV");
        assertEq(RiskMath.liquidationPenalty(10e18, 1_890e18, 100, -100e6, -100e6), 0, "AV < 0: nothing");
        assertEq(RiskMath.liquidationPenalty(10e18, 1_680e18, 100, 300e6, -700e6), 0, "capped by collateral");
        assertEq(RiskMath.liquidationPenalty(10e18, 1_680e18, 100, 300e6, 20e6), 20e6, "capped by collateral");
        assertEq(RiskMath.liquidationPenalty(0, 1_680e18, 100, 300e6, 20e6), 0);
    }

    function testFuzz_penalty_neverExceedsCaps(uint96 closeAbs, uint96 markPrice, int128 av, int128 col) public pure {
        uint256 p = RiskMath.liquidationPenalty(closeAbs, markPrice, 100, av, col);
        assertLe(p, RiskMath.fee(int256(uint256(closeAbs)), markPrice, 100), "<= f * notional");
        assertLe(int256(p), av > 0 ? int256(av) : int256(0), "<= max(AV, 0)");
        assertLe(int256(p), col > 0 ? int256(col) : int256(0), "<= max(collateral, 0)");
    }

    // ------------------------------------------------------------------ liquidation price

    function test_liquidationPrice_longAndShort() public pure {
        // 20x long: 19000 / 9.78; 3x long: 2000 / 1.467; 20x short: 21000 / 10.22
        assertEq(RiskMath.liquidationPrice(10e18, 2_000e18, 1_000e6, 0, 200, 11_000), 1_942_740_286_298_568_507_157);
        assertEq(RiskMath.liquidationPrice(1.5e18, 2_000e18, 1_000e6, 0, 200, 11_000), 1_363_326_516_700_749_829_584);
        assertEq(RiskMath.liquidationPrice(-10e18, 2_000e18, 1_000e6, 0, 200, 11_000), 2_054_794_520_547_945_205_479);
        // bankruptcy line (0%): 1900 / 2100
        assertEq(RiskMath.liquidationPrice(10e18, 2_000e18, 1_000e6, 0, 200, 0), 1_900e18);
        assertEq(RiskMath.liquidationPrice(-10e18, 2_000e18, 1_000e6, 0, 200, 0), 2_100e18);
    }

    function test_liquidationPrice_otherPositionsMove() public pure {
        // another position's margin (restMm 100) and value: the line moves up for the long
        uint256 alone = RiskMath.liquidationPrice(10e18, 2_000e18, 1_000e6, 0, 200, 11_000);
        uint256 withRest = RiskMath.liquidationPrice(10e18, 2_000e18, 1_000e6, 100e6, 200, 11_000);
        assertGt(withRest, alone, "more margin elsewhere -> liquidated earlier");
        // (1.1·100 − 1000 + 20000) / 9.78
        assertEq(withRest, 1_953_987_730_061_349_693_251);
    }

    function test_liquidationPrice_none() public pure {
        assertEq(RiskMath.liquidationPrice(0, 2_000e18, 1_000e6, 0, 200, 11_000), 0, "flat");
        assertEq(RiskMath.liquidationPrice(10e18, 2_000e18, 20_000e6, 0, 200, 11_000), 0, "1x long: never");
        assertEq(RiskMath.liquidationPrice(10e18, 2_000e18, 30_000e6, 0, 200, 11_000), 0, "over-collateralized long");
    }

    // ------------------------------------------------------------------ funding and ADL

    function test_fundingRate_and_indexDelta() public pure {
        assertEq(RiskMath.fundingRate(10e18, 5e18, 1e14), 33_333_333_333_333);
        assertEq(RiskMath.fundingRate(5e18, 10e18, 1e14), -33_333_333_333_333, "truncated toward zero");
        assertEq(RiskMath.fundingRate(0, 0, 1e14), 0);
        assertEq(RiskMath.fundingRate(7e18, 0, 1e14), 1e14, "one-sided: the maximum");
        assertEq(RiskMath.fundingRate(0, 7e18, 1e14), -1e14);
        assertEq(RiskMath.fundingIndexDelta(33_333_333_333_333, 2_000e18, 1), 66_666_666_666_666_000);
        assertEq(RiskMath.fundingIndexDelta(33_333_333_333_333, 2_100e18, 3), 3 * 69_999_999_999_999_300);
        assertEq(RiskMath.fundingIndexDelta(-6e13, 2_000e18, 2), -2.4e17);
    }

    function test_adlScore_ranking() public pure {
        assertEq(RiskMath.adlScore(20e18, 2_000e18, 2_500e18, 12_000e6), 5_208_333_333_333_333_333);
        assertEq(RiskMath.adlScore(-20e18, 2_000e18, 1_500e18, 12_000e6), 3_333_333_333_333_333_332);
        assertEq(RiskMath.adlScore(0, 2_000e18, 2_500e18, 12_000e6), 0);
        assertEq(RiskMath.adlScore(1e18, 2_000e18, 2_500e18, 0), 0, "AV <= 0 ranks nothing");
        // more leverage (less AV for the same notional) ranks first
        uint256 hi = RiskMath.adlScore(10e18, 2_000e18, 2_500e18, 2_000e6);
        uint256 lo = RiskMath.adlScore(10e18, 2_000e18, 2_500e18, 8_000e6);
        assertGt(hi, lo, "leverage ranks");
        // more profit (lower entry) ranks first at equal notional/AV
        assertGt(
            RiskMath.adlScore(10e18, 1_800e18, 2_500e18, 5_000e6),
            RiskMath.adlScore(10e18, 2_200e18, 2_500e18, 5_000e6),
            "profit ranks"
        );
    }
}
