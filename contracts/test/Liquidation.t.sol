// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {Exchange} from "../src/Exchange.sol";
import {InsuranceFund} from "../src/InsuranceFund.sol";
import {LiquidityVault} from "../src/LiquidityVault.sol";
import {MockAggregator} from "../src/mocks/MockAggregator.sol";
import {IAggregatorV3} from "../src/interfaces/IAggregatorV3.sol";

/// @notice Liquidation: partial to the 150% target, full close below 100% or under $100 remaining,
/// the penalty and its caps and split, the loss waterfall (fund, then socialized), the batch entry point.
contract LiquidationTest is Fixture {
    address internal alice;

    /// 20x long, collateral exactly 1,000, 10 ETH at 2,000 (the worked example).
    function _twentyX(string memory name) internal returns (address a) {
        a = newPro(name, 1_012e6);
        openPosition(a, ETH, 10e18, 20);
    }

    function _liquidate(address a, uint256 m) internal returns (uint256 keeperGot, uint256 fundGot) {
        uint256 k0 = bal(keeper);
        uint256 f0 = fund.totalPenaltyIncome();
        vm.prank(keeper);
        ex.liquidate(a, m);
        keeperGot = bal(keeper) - k0;
        fundGot = fund.totalPenaltyIncome() - f0;
    }

    // ------------------------------------------------------------------ partial

    function test_liquidatedEvent_carriesTheResultingState() public {
        alice = _twentyX("alice");
        setPrice(ETH, 1_942.74e8);
        Exchange.Liquidation memory expected = Exchange.Liquidation({
            liquidator: keeper,
            sizeClosed: -4_000_072_166_115_898_165,
            price: 1_942.74e18,
            penalty: 77_711_003,
            keeperReward: 38_855_501,
            fundShare: 38_855_502,
            full: false,
            accountValueBefore: 427.4e6,
            maintenanceMarginBefore: 388.548e6,
            collateralAfter: 693_244_864
        });
        vm.expectEmit(true, true, true, true, address(ex));
        emit Exchange.Liquidated(alice, ETH, expected);
        vm.prank(keeper);
        ex.liquidate(alice, ETH);
    }

    /// For any size, leverage and side, a price between the 110% and the 100% lines liquidates partially
    /// and lands the account at 150% (within 1 bp), penalty split half/half.
    function testFuzz_partial_landsAtTarget(uint256 collateralSeed, uint256 levSeed, bool isLong, uint256 priceSeed)
        public
    {
        uint256 lev = bound(levSeed, 2, 20);
        uint256 c = bound(collateralSeed, 200e6, 50_000e6 / lev); // order notional within 50,000
        uint256 n = c * lev; // notional, collateral units; size = n · 1e30 / 2000e18
        int256 size = int256(n * 5e8);
        if (!isLong) size = -size;
        alice = newPro("alice", c + RiskMath_fee(n));
        openPosition(alice, ETH, size, lev);
        assertEq(ex.accountValue(alice), int256(c), "AV = collateral at open");

        uint256 p110 = ex.liquidationPrice(alice, ETH, 11_000) / 1e10;
        uint256 p100 = ex.liquidationPrice(alice, ETH, 10_000) / 1e10;
        // a cent inside the 100% line: AV rounds down and MM up, so right at the line the ratio is 99.99%
        (uint256 lo, uint256 hi) = isLong ? (p100 + 1e6, p110 - 1) : (p110 + 2, p100 - 1e6);
        vm.assume(lo <= hi);
        setPrice(ETH, int256(bound(priceSeed, lo, hi)));
        assertTrue(ex.isLiquidatable(alice), "between the lines: liquidatable");
        assertGe(ex.marginRatioBps(alice), 10_000, "at or above 100%");

        (uint256 keeperGot, uint256 fundGot) = _liquidate(alice, ETH);
        int256 after_ = sizeOf(alice, ETH);
        assertTrue(after_ != 0 && (after_ > 0) == isLong, "partial: same side, not closed");
        uint256 mr = ex.marginRatioBps(alice);
        assertGe(mr, 15_000, "at least the target");
        assertLe(mr, 15_001, "within 1 bp of the target");
        assertFalse(ex.isLiquidatable(alice));
        assertTrue(fundGot == keeperGot || fundGot == keeperGot + 1, "50/50 split");
        // penalty = 1% of the closed notional, rounded up
        uint256 closed = uint256(isLong ? size - after_ : after_ - size);
        uint256 expectedPenalty = (closed * mark(ETH) * 100 - 1) / (1e30 * 1e4) + 1;
        assertEq(keeperGot + fundGot, expectedPenalty, "penalty = 1% of closed notional");
        assertEq(ex.totalBadDebt(), 0);
    }

    function RiskMath_fee(uint256 n) internal pure returns (uint256) {
        return (n * 6 + 9_999) / 10_000; // 0.06%, rounded up
    }

    // ------------------------------------------------------------------ full close

    function test_fullClose_belowOneHundredPercent() public {
        alice = _twentyX("alice");
        setPrice(ETH, 1_930e8); // AV 300, MM 386: 77.7%
        assertEq(ex.marginRatioBps(alice), 7_772);
        (uint256 planned, bool full) = ex.liquidatableSize(alice, ETH);
        assertTrue(full);
        assertEq(planned, 10e18);
        (uint256 keeperGot, uint256 fundGot) = _liquidate(alice, ETH);
        assertEq(sizeOf(alice, ETH), 0, "closed");
        assertEq(ex.openMarketsMask(alice), 0);
        // penalty 1% of 19,300 = 193 <= AV 300
        assertEq(keeperGot, 96.5e6);
        assertEq(fundGot, 96.5e6);
        assertEq(ex.collateralOf(alice), int256(107e6), "1000 - 700 - 193");
        assertEq(ex.totalBadDebt(), 0);
        // the account keeps what is left
        vm.prank(alice);
        ex.withdraw(107e6);
        assertEq(bal(alice), 107e6);
    }

    function test_fullClose_whenLessThan100Remains() public {
        // 0.08 ETH at 20x: 160 notional, 8 collateral; a partial would leave ~0.048 ETH (~93 USD)
        alice = newPro("alice", 8.096e6);
        openPosition(alice, ETH, 0.08e18, 20);
        assertEq(ex.collateralOf(alice), int256(8e6));
        setPrice(ETH, 1_942.74e8);
        assertTrue(ex.isLiquidatable(alice));
        assertGe(ex.marginRatioBps(alice), 10_000, "above 100%: only the remainder rule makes it full");
        (, bool full) = ex.liquidatableSize(alice, ETH);
        assertTrue(full, "full: remainder under 100");
        (uint256 keeperGot, uint256 fundGot) = _liquidate(alice, ETH);
        assertEq(sizeOf(alice, ETH), 0);
        assertEq(keeperGot + fundGot, 1_554_192, "1% of 155.4192, rounded up");
        assertEq(ex.collateralOf(alice), int256(8e6 - 4_580_800 - 1_554_192));

        // 0.1 ETH leaves ~116 USD: partial
        address b = newPro("bob", 10.12e6);
        setPriceCalm(ETH, 2_000e8);
        openPosition(b, ETH, 0.1e18, 20);
        setPrice(ETH, 1_942.74e8);
        (, full) = ex.liquidatableSize(b, ETH);
        assertFalse(full, "partial: remainder over 100");
        _liquidate(b, ETH);
        assertGt(sizeOf(b, ETH), 0, "still long");
        assertGe(RiskMathNotional(sizeOf(b, ETH), mark(ETH)), uint256(100e6), "at least 100 remains");
    }

    function RiskMathNotional(int256 s, uint256 p) internal pure returns (uint256) {
        return (uint256(s >= 0 ? s : -s) * p) / 1e30;
    }

    /// Any price at or past the 100% line closes the whole position.
    function testFuzz_fullClose_atOrBelow100(uint256 priceSeed, bool isLong) public {
        alice = newPro("alice", 1_012e6);
        openPosition(alice, ETH, isLong ? int256(10e18) : -10e18, 20);
        // long: 100% line 1938.78, bankrupt 1900; short: 2058.82 / 2100
        uint256 p = isLong ? bound(priceSeed, 1_800e8, 1_938.78e8) : bound(priceSeed, 2_058.83e8, 2_200e8);
        setPrice(ETH, int256(p));
        assertLt(ex.marginRatioBps(alice), 10_000, "below 100%");
        uint256 debtBefore = ex.totalBadDebt();
        int256 av = ex.accountValue(alice);
        (uint256 keeperGot, uint256 fundGot) = _liquidate(alice, ETH);
        assertEq(sizeOf(alice, ETH), 0, "full close");
        uint256 penalty = keeperGot + fundGot;
        uint256 fullPenalty = (10e18 * p * 1e10 * 100 - 1) / (1e30 * 1e4) + 1;
        uint256 avPos = av > 0 ? uint256(av) : 0;
        assertEq(penalty, fullPenalty < avPos ? fullPenalty : avPos, "penalty = min(1% notional, max(AV,0))");
        assertGe(ex.collateralOf(alice), 0, "flat accounts never keep a debt");
        if (av >= 0) {
            assertEq(ex.totalBadDebt(), debtBefore, "no bad debt from a solvent account");
            assertEq(ex.collateralOf(alice), av - int256(penalty));
        } else {
            assertEq(ex.totalBadDebt() - debtBefore, uint256(-av), "bad debt = -AV");
        }
    }

    // ------------------------------------------------------------------ penalty caps

    function test_penalty_cappedByAccountValue() public {
        alice = _twentyX("alice");
        setPrice(ETH, 1_905e8); // AV 50; 1% of 19,050 = 190.5
        (uint256 keeperGot, uint256 fundGot) = _liquidate(alice, ETH);
        assertEq(keeperGot, 25e6);
        assertEq(fundGot, 25e6);
        assertEq(ex.collateralOf(alice), 0, "penalty took the whole AV, no more");
        assertEq(ex.totalBadDebt(), 0, "penalty never creates bad debt");
    }

    function test_penalty_zeroAtBankruptcy() public {
        alice = _twentyX("alice");
        setPrice(ETH, 1_900e8); // AV exactly 0
        (uint256 keeperGot, uint256 fundGot) = _liquidate(alice, ETH);
        assertEq(keeperGot + fundGot, 0);
        assertEq(ex.collateralOf(alice), 0);
        assertEq(ex.totalBadDebt(), 0);
    }

    /// Cross margin: AV is positive (another market is in profit) but the collateral left after realizing
    /// the liquidated market's loss is negative: the penalty is capped at what the account holds (0).
    function test_penalty_cappedByCollateralHeld_crossMargin() public {
        alice = newPro("alice", 2_530e6);
        openPosition(alice, ETH, 10e18, 20); // 20,000
        openPosition(alice, BTC, 0.5e18, 20); // 30,000
        assertEq(ex.collateralOf(alice), int256(2_500e6));
        setPrice(BTC, 62_000e8); // +1,000
        setPrice(ETH, 1_680e8); // -3,200
        assertEq(ex.accountValue(alice), int256(300e6));
        (uint256 keeperGot, uint256 fundGot) = _liquidate(alice, ETH);
        assertEq(sizeOf(alice, ETH), 0, "full: MR 31%");
        assertEq(keeperGot + fundGot, 0, "collateral after realize is -700: no penalty");
        assertEq(ex.collateralOf(alice), -700e6, "a debt carried by the open BTC position");
        assertEq(ex.totalBadDebt(), 0, "not flat: no bad debt yet");
        assertEq(ex.accountValue(alice), int256(300e6), "AV unchanged by a penalty-free close");
        assertEq(bal(address(ex)), 0, "the exchange holds nothing for a negative balance");
        // the BTC liquidation realizes the profit: penalty min(310, AV 300, collateral 300)
        (keeperGot, fundGot) = _liquidate(alice, BTC);
        assertEq(keeperGot + fundGot, 300e6);
        assertEq(ex.collateralOf(alice), 0);
        assertEq(ex.totalBadDebt(), 0);
    }

    // ------------------------------------------------------------------ waterfall

    function test_badDebt_paidByFund() public {
        alice = _twentyX("alice");
        setPrice(ETH, 1_890e8); // AV -100
        assertEq(ex.accountValue(alice), -100e6);
        uint256 fundBefore = bal(address(fund));
        uint256 vaultBefore = bal(address(vault));
        vm.expectEmit(true, true, true, true, address(fund));
        emit InsuranceFund.FundPayout(alice, address(vault), 100e6, 100e6, fundBefore - 100e6);
        vm.expectEmit(true, true, true, true, address(ex));
        emit Exchange.BadDebtSettled(alice, 100e6, 100e6, 0);
        (uint256 keeperGot, uint256 fundGot) = _liquidate(alice, ETH);
        assertEq(keeperGot, 0, "no penalty from a bankrupt account");
        assertEq(fundGot, 0);
        assertEq(bal(address(fund)), fundBefore - 100e6);
        assertEq(fund.totalPayouts(), 100e6);
        assertEq(ex.totalBadDebt(), 100e6);
        assertEq(ex.totalSocializedLoss(), 0);
        assertEq(vault.totalSocializedLoss(), 0);
        assertEq(ex.collateralOf(alice), 0, "debt cleared");
        assertEq(bal(address(vault)) - vaultBefore, 1_100e6, "the vault receives the full trading loss");
        assertEq(bal(address(ex)), 0);
    }

    function test_liquidateBatch_skipsHealthyAndRepeats() public {
        alice = _twentyX("alice");
        address dave = _twentyX("dave");
        address bob = newPro("bob", 2_012e6);
        openPosition(bob, ETH, 10e18, 20); // 500%: healthy at 1942.74
        address carol = newPro("carol", 100e6); // flat
        setPrice(ETH, 1_942.74e8);

        address[] memory accts = new address[](7);
        uint256[] memory mkts = new uint256[](7);
        (accts[0], mkts[0]) = (alice, ETH);
        (accts[1], mkts[1]) = (bob, ETH);
        (accts[2], mkts[2]) = (alice, ETH); // racing duplicate: healthy after the first
        (accts[3], mkts[3]) = (carol, ETH);
        (accts[4], mkts[4]) = (alice, BTC); // no position there
        (accts[5], mkts[5]) = (alice, 9); // unlisted market
        (accts[6], mkts[6]) = (dave, ETH);
        vm.prank(keeper);
        uint256 count = ex.liquidateBatch(accts, mkts);
        assertEq(count, 2, "alice once, dave once");
        assertEq(ex.marginRatioBps(alice), 15_000);
        assertEq(ex.marginRatioBps(dave), 15_000);
        assertEq(sizeOf(alice, ETH), 10e18 - 4_000_072_166_115_898_165, "alice liquidated once only");
        assertEq(sizeOf(bob, ETH), 10e18, "bob untouched");
        assertEq(bal(keeper), 2 * 38_855_501, "two rewards");

        // a second keeper racing the first: batch returns 0 without reverting, single call reverts
        address keeper2 = makeAddr("keeper2");
        vm.prank(keeper2);
        assertEq(ex.liquidateBatch(accts, mkts), 0, "nothing left");
        vm.prank(keeper2);
        vm.expectRevert(abi.encodeWithSelector(Exchange.NotLiquidatable.selector, alice, 15_000));
        ex.liquidate(alice, ETH);
        assertEq(bal(keeper2), 0);
    }

    function test_notLiquidatable() public {
        address bob = _twentyX("bob");
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(Exchange.NotLiquidatable.selector, bob, 25_000));
        ex.liquidate(bob, ETH);
        address carol = newPro("carol", 100e6);
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(Exchange.NotLiquidatable.selector, carol, type(uint256).max));
        ex.liquidate(carol, ETH);
        // wrong market: bob holds no BTC
        setPrice(ETH, 1_930e8);
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(Exchange.NotLiquidatable.selector, bob, 7_772));
        ex.liquidate(bob, BTC);
    }

    /// A penalty above Rt·mmr (here 4% > 1.5 · 2%) makes a partial close useless: the liquidation must
    /// close everything (penalty capped by AV), not revert.
    function test_highPenaltyParam_liquidationFullCloses() public {
        Exchange.RiskParams memory p = riskParams();
        p.penaltyBps = 400;
        ex.setRiskParams(p);
        alice = _twentyX("alice");
        setPrice(ETH, 1_942.74e8);
        (uint256 planned, bool full) = ex.liquidatableSize(alice, ETH);
        assertTrue(full);
        assertEq(planned, 10e18);
        (uint256 keeperGot, uint256 fundGot) = _liquidate(alice, ETH);
        assertEq(sizeOf(alice, ETH), 0);
        assertEq(keeperGot + fundGot, 427.4e6, "4% of 19,427.4 capped by AV 427.40");
        assertEq(ex.collateralOf(alice), 0);
        assertEq(ex.totalBadDebt(), 0);
    }

    /// The same for a market listed with a 0.5% maintenance margin (1.5 · 0.5% < 1% penalty).
    function test_lowMmrMarket_liquidationFullCloses() public {
        uint256 m = ex.listMarket("LOW", 50, OI_CAP, OI_CAP);
        MockAggregator p1 = new MockAggregator(8, "LOW primary", 2_000e8);
        MockAggregator p2 = new MockAggregator(8, "LOW secondary", 2_000e8);
        oracle.setFeed(m, IAggregatorV3(address(p1)), IAggregatorV3(address(p2)), HEARTBEAT);
        oracle.refresh(m);
        alice = newPro("alice", 1_012e6);
        openPosition(alice, m, 10e18, 20); // AV 1,000, MM 100
        // 110% line: 19000 / 9.945 = 1910.5; 100% line: 19000 / 9.95 = 1909.5
        p1.setAnswer(1_910e8);
        p2.setAnswer(1_910e8);
        assertTrue(ex.isLiquidatable(alice));
        assertGe(ex.marginRatioBps(alice), 10_000, "a partial would be planned without the k <= 0 rule");
        (uint256 keeperGot, uint256 fundGot) = _liquidate(alice, m);
        assertEq(sizeOf(alice, m), 0, "closed in full");
        assertEq(keeperGot + fundGot, 100e6, "penalty capped by AV 100");
        assertEq(ex.collateralOf(alice), 0);
    }

    function test_liquidationFee_bookedAsPenaltyIncome() public {
        alice = _twentyX("alice");
        setPrice(ETH, 1_930e8);
        vm.expectEmit(true, true, true, false, address(fund));
        emit InsuranceFund.FundIncome(InsuranceFund.IncomeKind.LiquidationPenalty, alice, 96.5e6, 0);
        _liquidate(alice, ETH);
        assertEq(fund.totalPenaltyIncome(), 96.5e6);
    }
}

/// @notice The last step of the waterfall needs a fund too small for the debt.
contract LiquidationSmallFundTest is Fixture {
    function fundSeed() internal pure override returns (uint256) {
        return 30e6;
    }

    function test_badDebt_beyondFund_isSocialized() public {
        address alice = newPro("alice", 1_012e6);
        openPosition(alice, ETH, 10e18, 20);
        assertEq(bal(address(fund)), 34e6, "30 donated + 4 trading fee");
        setPrice(ETH, 1_890e8); // debt 100
        uint256 vaultBefore = bal(address(vault));
        vm.expectEmit(true, true, true, true, address(fund));
        emit InsuranceFund.FundPayout(alice, address(vault), 100e6, 34e6, 0);
        vm.expectEmit(true, true, true, true, address(vault));
        emit LiquidityVault.SocializedLoss(alice, 66e6, 66e6);
        vm.expectEmit(true, true, true, true, address(ex));
        emit Exchange.BadDebtSettled(alice, 100e6, 34e6, 66e6);
        vm.prank(keeper);
        ex.liquidate(alice, ETH);
        assertEq(bal(address(fund)), 0, "fund emptied");
        assertEq(ex.totalBadDebt(), 100e6);
        assertEq(ex.totalSocializedLoss(), 66e6);
        assertEq(vault.totalSocializedLoss(), 66e6);
        assertEq(fund.totalPayouts(), 34e6);
        assertEq(bal(address(vault)) - vaultBefore, 1_034e6, "collateral + what the fund could pay");
        assertEq(ex.collateralOf(alice), 0);

        // a second bankrupt account: the empty fund pays nothing, all of it is socialized
        address bob = newPro("bob", 1_012e6);
        setPriceCalm(ETH, 2_000e8);
        openPosition(bob, ETH, 10e18, 20);
        setPrice(ETH, 1_880e8); // debt 200 (fund got 4 from bob's fee)
        vm.prank(keeper);
        ex.liquidate(bob, ETH);
        assertEq(ex.totalBadDebt(), 300e6);
        assertEq(ex.totalSocializedLoss(), 66e6 + 196e6);
        assertEq(vault.totalSocializedLoss(), ex.totalSocializedLoss());
        assertEq(fund.totalPayouts() + ex.totalSocializedLoss(), ex.totalBadDebt(), "every debt is paid or socialized");
    }
}
