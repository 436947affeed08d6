// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {Exchange} from "../src/Exchange.sol";

/// @notice The worked examples of docs/risk-model.md, to the cent. Where the document rounds (Δ "4.0 ETH",
/// penalty "$77.71") the exact integer outcome of the rule is asserted too; those exact figures were
/// computed independently of the contract (exact rational arithmetic of the document's formulas,
/// rounded as the document prescribes: requirements up, value down).
contract WorkedExamplesTest is Fixture {
    uint256 internal constant CENT = 1e4; // collateral units
    uint256 internal constant HALF_CENT = 5e3;
    uint256 internal constant PRICE_CENT = 1e16; // 1e18 fixed point

    address internal alice;

    /// The 20x professional long: $1,012 deposit, 10 ETH at $2,000; the $12 fee (0.06% of $20,000)
    /// leaves exactly $1,000 of collateral.
    function _openTwentyX() internal {
        alice = newPro("alice", 1_012e6);
        openPosition(alice, ETH, 10e18, 20);
    }

    function test_twentyX_openState() public {
        uint256 fundBefore = bal(address(fund));
        uint256 vaultBefore = bal(address(vault));
        _openTwentyX();
        assertEq(ex.collateralOf(alice), int256(1_000e6), "collateral after the 12 USD fee");
        assertEq(ex.accountValue(alice), int256(1_000e6), "AV at open");
        assertEq(ex.maintenanceMargin(alice), 400e6, "MM = 2% of 20,000");
        assertEq(ex.marginRatioBps(alice), 25_000, "250% at open");
        assertEq(bal(address(fund)) - fundBefore, 4e6, "fund takes 0.02% of notional");
        assertEq(bal(address(vault)) - vaultBefore, 8e6, "vault takes the rest of the fee");
        assertEq(bal(address(ex)), 1_000e6, "exchange holds the collateral");
        assertFalse(ex.isLiquidatable(alice));
    }

    function test_twentyX_liquidationPriceView() public {
        _openTwentyX();
        uint256 lp = ex.liquidationPrice(alice, ETH, 0);
        assertApproxEqAbs(lp, 1_942.74e18, PRICE_CENT, "liquidation line ~ 1942.74");
        // P = 19000 / 9.78 exactly, floored at 1e18
        assertEq(lp, 1_942_740_286_298_568_507_157, "liquidation line to the wei");
        // the other lines of the table, through the same view
        assertApproxEqAbs(ex.liquidationPrice(alice, ETH, 20_000), 1_979.17e18, PRICE_CENT, "200% line");
        assertApproxEqAbs(ex.liquidationPrice(alice, ETH, 15_000), 1_958.76e18, PRICE_CENT, "150% line");
        assertApproxEqAbs(ex.liquidationPrice(alice, ETH, 12_000), 1_946.72e18, PRICE_CENT, "120% line");
        assertApproxEqAbs(ex.liquidationPrice(alice, ETH, 10_000), 1_938.78e18, PRICE_CENT, "100% line");
    }

    function test_twentyX_ratioTable() public {
        _openTwentyX();
        // 200% notice at 1979.17: AV 791.70, MM 395.834 -> 20000.8 bps
        setPrice(ETH, 1_979.17e8);
        assertEq(ex.accountValue(alice), int256(791.7e6), "AV @1979.17");
        assertApproxEqAbs(ex.marginRatioBps(alice), 20_000, 1, "200% line");
        // 150% warning at 1958.76: 14999.3 bps
        setPrice(ETH, 1_958.76e8);
        assertApproxEqAbs(ex.marginRatioBps(alice), 15_000, 1, "150% line");
        assertEq(ex.marginRatioBps(alice), 14_999, "just below 150%");
        // 120% danger at 1946.72: 11999.7 bps
        setPrice(ETH, 1_946.72e8);
        assertApproxEqAbs(ex.marginRatioBps(alice), 12_000, 1, "120% line");
        assertEq(ex.marginRatioBps(alice), 11_999, "just below 120%");
        // one cent above the liquidation line: not liquidatable
        setPrice(ETH, 1_942.75e8);
        assertFalse(ex.isLiquidatable(alice), "1942.75 is above the line");
        (uint256 sz,) = ex.liquidatableSize(alice, ETH);
        assertEq(sz, 0, "nothing to liquidate above the line");
        // 100% at 1938.78
        setPrice(ETH, 1_938.78e8);
        assertApproxEqAbs(ex.marginRatioBps(alice), 10_000, 1, "100% line");
        // bankruptcy at 1900: AV 0
        setPrice(ETH, 1_900e8);
        assertEq(ex.accountValue(alice), 0, "AV 0 at 1900");
        assertEq(ex.marginRatioBps(alice), 0, "0% at bankruptcy");
    }

    function test_twentyX_liquidationAt194274() public {
        _openTwentyX();
        setPrice(ETH, 194_274_000_000);
        assertEq(mark(ETH), 1_942.74e18, "mark");
        assertEq(ex.accountValue(alice), int256(427.4e6), "AV 427.40");
        assertEq(ex.maintenanceMargin(alice), 388.548e6, "MM 388.548");
        assertEq(ex.marginRatioBps(alice), 10_999, "just under 110%");
        assertTrue(ex.isLiquidatable(alice), "liquidatable at 1942.74");

        (uint256 planned, bool plannedFull) = ex.liquidatableSize(alice, ETH);
        assertFalse(plannedFull, "partial");

        uint256 keeperBefore = bal(keeper);
        uint256 fundBefore = bal(address(fund));
        uint256 penaltyIncomeBefore = fund.totalPenaltyIncome();
        vm.prank(keeper);
        ex.liquidate(alice, ETH);

        uint256 closed = 10e18 - uint256(sizeOf(alice, ETH));
        assertEq(closed, planned, "liquidatableSize view predicted the close");
        assertApproxEqAbs(closed, 4e18, 1e14, "closes 4.0 ETH");
        // Δ = (1.5·388.548 − 427.4 + slack) / (1942.74·(0.03 − 0.01)) rounded up
        assertEq(closed, 4_000_072_166_115_898_165, "close size to the wei");

        uint256 keeperGot = bal(keeper) - keeperBefore;
        uint256 fundGot = bal(address(fund)) - fundBefore;
        uint256 penalty = keeperGot + fundGot;
        assertApproxEqAbs(penalty, 77.7096e6, HALF_CENT, "penalty 77.71");
        assertEq(penalty, 77_711_003, "penalty = 1% of closed notional, rounded up");
        assertEq(keeperGot, penalty / 2, "keeper half");
        assertEq(fundGot, penalty - penalty / 2, "fund half");
        assertApproxEqAbs(keeperGot, 38.85e6, CENT, "keeper 38.85");
        assertApproxEqAbs(fundGot, 38.85e6, CENT, "fund 38.85");
        assertEq(fund.totalPenaltyIncome() - penaltyIncomeBefore, fundGot, "fund booked its share");

        int256 avAfter = ex.accountValue(alice);
        uint256 mmAfter = ex.maintenanceMargin(alice);
        assertApproxEqAbs(avAfter, int256(349.6904e6), HALF_CENT, "AV after 349.69");
        assertApproxEqAbs(mmAfter, 233.1288e6, HALF_CENT, "MM after 233.13");
        assertEq(avAfter, int256(349_688_996), "AV after to the unit");
        assertEq(mmAfter, 233_125_996, "MM after to the unit");
        assertEq(ex.marginRatioBps(alice), 15_000, "lands at exactly 150%");
        assertFalse(ex.isLiquidatable(alice), "healthy after");
        assertEq(ex.collateralOf(alice), int256(693_244_864), "collateral after");
        assertEq(bal(address(ex)), 693_244_864, "exchange holds the collateral after");
        assertEq(ex.totalBadDebt(), 0, "no bad debt");
    }

    /// The ratio at open at each tier's maximum leverage (fees ignored): 50 / leverage.
    function test_ratioAtOpenPerTier() public {
        // novice 3x: 1667%
        address nov = newNovice("nov", 1_001.8e6);
        openPosition(nov, ETH, 1.5e18, 3);
        assertEq(ex.collateralOf(nov), int256(1_000e6), "novice collateral");
        assertEq(ex.marginRatioBps(nov), 166_666, "3x: 1667%");
        // junior 5x: 1000%
        address jun = newNovice("jun", 10_000e6);
        churn(jun, 5);
        assertEq(uint8(ex.tierOf(jun)), uint8(Exchange.Tier.Junior));
        uint256 freejun = uint256(ex.collateralOf(jun));
        vm.prank(jun);
        ex.withdraw(freejun);
        fundTrader(jun, 1_003e6);
        openPosition(jun, ETH, 2.5e18, 5);
        assertEq(ex.collateralOf(jun), int256(1_000e6), "junior collateral");
        assertEq(ex.marginRatioBps(jun), 100_000, "5x: 1000%");
        // senior 10x: 500%
        address sen = newNovice("sen", 10_000e6);
        churn(sen, 20);
        assertEq(uint8(ex.tierOf(sen)), uint8(Exchange.Tier.Senior));
        uint256 freesen = uint256(ex.collateralOf(sen));
        vm.prank(sen);
        ex.withdraw(freesen);
        fundTrader(sen, 1_006e6);
        openPosition(sen, ETH, 5e18, 10);
        assertEq(ex.collateralOf(sen), int256(1_000e6), "senior collateral");
        assertEq(ex.marginRatioBps(sen), 50_000, "10x: 500%");
    }

    /// The novice at 3x: $1,000 of collateral, 1.5 ETH at $2,000, liquidated at $1,363.33 (−31.8%).
    function test_noviceThreeX_liquidationPrice() public {
        address nov = newNovice("nov", 1_001.8e6);
        openPosition(nov, ETH, 1.5e18, 3);
        assertEq(ex.collateralOf(nov), int256(1_000e6), "1.8 USD fee");
        uint256 lp = ex.liquidationPrice(nov, ETH, 0);
        assertApproxEqAbs(lp, 1_363.33e18, PRICE_CENT, "1363.33");
        assertEq(lp, 1_363_326_516_700_749_829_584, "2000 / 1.467, to the wei");
        // the move: -31.8%
        assertEq(((2_000e18 - lp) * 1_000) / 2_000e18, 318, "-31.8%");
        // and the line is where the contract flips: a cent above / at a cent below
        setPriceCalm(ETH, 1_363.34e8);
        assertFalse(ex.isLiquidatable(nov), "above the line");
        setPrice(ETH, 1_363.32e8);
        assertTrue(ex.isLiquidatable(nov), "below the line");
    }

    /// The short mirror of the 20x example: liquidation above the entry, landing at 150% too.
    function test_twentyX_short_mirror() public {
        alice = newPro("alice", 1_012e6);
        openPosition(alice, ETH, -10e18, 20);
        // AV = 1000 - 10(P - 2000) = 1.1 · 0.2P  ->  P = 21000 / 10.22
        uint256 lp = ex.liquidationPrice(alice, ETH, 0);
        assertEq(lp, 2_054_794_520_547_945_205_479, "21000/10.22 floored");
        setPrice(ETH, 2_054.79e8);
        assertFalse(ex.isLiquidatable(alice), "below the short's line");
        setPrice(ETH, 2_054.80e8);
        assertTrue(ex.isLiquidatable(alice), "above the short's line");
        vm.prank(keeper);
        ex.liquidate(alice, ETH);
        assertEq(ex.marginRatioBps(alice), 15_000, "short lands at 150%");
        assertLt(sizeOf(alice, ETH), 0, "still short");
    }
}
