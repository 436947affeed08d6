// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {Vm} from "./utils/Vm.sol";
import {Exchange} from "../src/Exchange.sol";
import {InsuranceFund} from "../src/InsuranceFund.sol";
import {LiquidityVault} from "../src/LiquidityVault.sol";
import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";

/// @notice User layer (tiers, education, certification, account caps, margin) and system layer caps,
/// every rejection checked with its exact custom error and arguments; role separation.
contract UserLayerTest is Fixture {
    // ------------------------------------------------------------------ education

    function test_educationRequired_beforeFirstTrade() public {
        address a = makeAddr("alice");
        fundTrader(a, 1_000e6);
        vm.expectRevert(abi.encodeWithSelector(Exchange.EducationRequired.selector, a));
        openPosition(a, ETH, 0.1e18, 2);
        educate(a);
        openPosition(a, ETH, 0.1e18, 2);
        assertEq(sizeOf(a, ETH), 0.1e18, "educated novice trades");
    }

    function test_educationRevoked_blocksIncreaseNotReduction() public {
        address a = newNovice("alice", 1_000e6);
        openPosition(a, ETH, 0.5e18, 3);
        vm.prank(riskAdmin);
        ex.setEducation(a, false);
        vm.expectRevert(abi.encodeWithSelector(Exchange.EducationRequired.selector, a));
        openPosition(a, ETH, 0.1e18, 3);
        openPosition(a, ETH, -0.2e18, 3);
        assertEq(sizeOf(a, ETH), 0.3e18, "reduction allowed without education");
    }

    // ------------------------------------------------------------------ tier limits

    function test_novice_limits() public {
        address a = newNovice("alice", 2_000e6);
        assertEq(uint8(ex.tierOf(a)), uint8(Exchange.Tier.Novice));
        vm.expectRevert(abi.encodeWithSelector(Exchange.LeverageTooHigh.selector, Exchange.Tier.Novice, 3, 4));
        openPosition(a, ETH, 0.1e18, 4);
        // 2.5 ETH at 2000 = exactly 5,000: allowed; one micro-ETH more is not
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.OrderTooLarge.selector, Exchange.Tier.Novice, 5_000e6, 5_000_002_000)
        );
        openPosition(a, ETH, 2.5e18 + 1e12, 3);
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.OrderTooLarge.selector, Exchange.Tier.Novice, 5_000e6, 6_000e6)
        );
        openPosition(a, ETH, -3e18, 3); // shorts by |size|
        openPosition(a, ETH, 2.5e18, 3);
        assertEq(sizeOf(a, ETH), 2.5e18, "order at the limit");
    }

    function test_junior_limits_after5Trades() public {
        address a = newNovice("alice", 4_200e6);
        churn(a, 4);
        assertEq(uint8(ex.tierOf(a)), uint8(Exchange.Tier.Novice), "4 trades: novice");
        vm.expectRevert(abi.encodeWithSelector(Exchange.LeverageTooHigh.selector, Exchange.Tier.Novice, 3, 5));
        openPosition(a, ETH, 0.1e18, 5);
        churn(a, 1);
        assertEq(uint8(ex.tierOf(a)), uint8(Exchange.Tier.Junior), "5 trades: junior");
        vm.expectRevert(abi.encodeWithSelector(Exchange.LeverageTooHigh.selector, Exchange.Tier.Junior, 5, 6));
        openPosition(a, ETH, 0.1e18, 6);
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.OrderTooLarge.selector, Exchange.Tier.Junior, 20_000e6, 20_000_002_000)
        );
        openPosition(a, ETH, 10e18 + 1e12, 5);
        openPosition(a, ETH, 10e18, 5);
        assertEq(sizeOf(a, ETH), 10e18, "junior: 20,000 at 5x");
    }

    function test_senior_limits_after20Trades() public {
        address a = newNovice("alice", 5_200e6);
        churn(a, 19);
        assertEq(uint8(ex.tierOf(a)), uint8(Exchange.Tier.Junior), "19 trades: junior");
        churn(a, 1);
        assertEq(uint8(ex.tierOf(a)), uint8(Exchange.Tier.Senior), "20 trades: senior");
        vm.expectRevert(abi.encodeWithSelector(Exchange.LeverageTooHigh.selector, Exchange.Tier.Senior, 10, 11));
        openPosition(a, ETH, 0.1e18, 11);
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.OrderTooLarge.selector, Exchange.Tier.Senior, 50_000e6, 50_000_002_000)
        );
        openPosition(a, ETH, 25e18 + 1e12, 10);
        openPosition(a, ETH, 25e18, 10);
        assertEq(sizeOf(a, ETH), 25e18, "senior: 50,000 at 10x");
    }

    function test_professional_limits_whenCertified() public {
        address a = newPro("alice", 2_600e6);
        assertEq(uint8(ex.tierOf(a)), uint8(Exchange.Tier.Professional));
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.LeverageTooHigh.selector, Exchange.Tier.Professional, 20, 21)
        );
        openPosition(a, ETH, 0.1e18, 21);
        vm.expectRevert(
            abi.encodeWithSelector(
                Exchange.OrderTooLarge.selector, Exchange.Tier.Professional, 50_000e6, 50_000_002_000
            )
        );
        openPosition(a, ETH, 25e18 + 1e12, 20);
        openPosition(a, ETH, 25e18, 20);
        assertEq(sizeOf(a, ETH), 25e18, "professional: 50,000 at 20x");
    }

    function test_tierLimitsView() public view {
        (uint256 l0, uint256 n0) = ex.tierLimits(Exchange.Tier.Novice);
        (uint256 l1, uint256 n1) = ex.tierLimits(Exchange.Tier.Junior);
        (uint256 l2, uint256 n2) = ex.tierLimits(Exchange.Tier.Senior);
        (uint256 l3, uint256 n3) = ex.tierLimits(Exchange.Tier.Professional);
        assertEq(l0, 3);
        assertEq(n0, 5_000e6);
        assertEq(l1, 5);
        assertEq(n1, 20_000e6);
        assertEq(l2, 10);
        assertEq(n2, 50_000e6);
        assertEq(l3, 20);
        assertEq(n3, 50_000e6);
    }

    // ------------------------------------------------------------------ tiers unlock automatically

    function test_tierChanged_at5And20Trades() public {
        address a = newNovice("alice", 1_000e6);
        vm.recordLogs();
        churn(a, 25);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 n;
        Exchange.Tier[2] memory olds = [Exchange.Tier.Novice, Exchange.Tier.Junior];
        Exchange.Tier[2] memory news = [Exchange.Tier.Junior, Exchange.Tier.Senior];
        uint256[2] memory at = [uint256(5), 20];
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter != address(ex) || logs[i].topics[0] != Exchange.TierChanged.selector) continue;
            assertEq(logs[i].topics[1], bytes32(uint256(uint160(a))), "account topic");
            (Exchange.Tier o, Exchange.Tier t, uint256 trades) =
                abi.decode(logs[i].data, (Exchange.Tier, Exchange.Tier, uint256));
            assertLt(n, 2, "only two tier changes");
            assertEq(uint8(o), uint8(olds[n]), "old tier");
            assertEq(uint8(t), uint8(news[n]), "new tier");
            assertEq(trades, at[n], "trade count at the change");
            ++n;
        }
        assertEq(n, 2, "TierChanged at 5 and 20");
        assertEq(ex.tradeCount(a), 25);
    }

    function test_certification_promotes_and_uncertify_dropsBack() public {
        address a = newNovice("alice", 3_000e6);
        churn(a, 7);
        vm.expectEmit(true, true, true, true, address(ex));
        emit Exchange.TierChanged(a, Exchange.Tier.Junior, Exchange.Tier.Professional, 7);
        certify(a);
        assertEq(uint8(ex.tierOf(a)), uint8(Exchange.Tier.Professional));
        openPosition(a, ETH, 1e18, 20);

        vm.expectEmit(true, true, true, true, address(ex));
        emit Exchange.TierChanged(a, Exchange.Tier.Professional, Exchange.Tier.Junior, 8);
        uncertify(a);
        assertEq(uint8(ex.tierOf(a)), uint8(Exchange.Tier.Junior), "back to what the trade count gives");
        vm.expectRevert(abi.encodeWithSelector(Exchange.LeverageTooHigh.selector, Exchange.Tier.Junior, 5, 20));
        openPosition(a, ETH, 0.1e18, 20);

        // re-certifying an already certified account emits no tier change
        certify(a);
        vm.recordLogs();
        certify(a);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        for (uint256 i; i < logs.length; ++i) {
            assertTrue(logs[i].topics[0] != Exchange.TierChanged.selector, "no TierChanged without a change");
        }
    }

    function test_certifiedNovice_needsNoEducation() public {
        address a = makeAddr("pro");
        certify(a);
        fundTrader(a, 1_000e6);
        openPosition(a, ETH, 1e18, 20);
        assertEq(sizeOf(a, ETH), 1e18);
        // uncertified and uneducated: increases are refused again
        uncertify(a);
        vm.expectRevert(abi.encodeWithSelector(Exchange.EducationRequired.selector, a));
        openPosition(a, ETH, 0.1e18, 1);
    }

    // ------------------------------------------------------------------ account caps and margin

    function test_positionCapExceeded_acrossMarkets() public {
        address a = newPro("alice", 6_000e6);
        openPosition(a, BTC, 0.8e18, 20); // 48,000
        openPosition(a, ETH, 24e18, 20); // 48,000
        vm.expectRevert(abi.encodeWithSelector(Exchange.PositionCapExceeded.selector, 100_000e6, 101_000e6));
        openPosition(a, SOL, 50e18, 20); // +5,000
        openPosition(a, SOL, 40e18, 20); // exactly 100,000
        Exchange.AccountSummary memory s = ex.accountSummary(a);
        assertEq(s.notional, 100_000e6, "at the cap");
    }

    function test_positionCap_measuredAtMark() public {
        address a = newPro("alice", 6_000e6);
        openPosition(a, BTC, 0.8e18, 20);
        openPosition(a, ETH, 24e18, 20);
        openPosition(a, SOL, 40e18, 20); // 100,000
        setPrice(SOL, 101e8); // 100,040 at mark
        vm.expectRevert(abi.encodeWithSelector(Exchange.PositionCapExceeded.selector, 100_000e6, 100_141_000_000));
        openPosition(a, SOL, 1e18, 20);
    }

    function test_insufficientMargin() public {
        address a = newPro("alice", 1_000e6);
        // the 12 USD fee is taken first: 988 < 1000
        vm.expectRevert(abi.encodeWithSelector(Exchange.InsufficientMargin.selector, 1_000e6, int256(988e6)));
        openPosition(a, ETH, 10e18, 20);
        fundTrader(a, 12e6);
        // leverage is the trader's choice: at 10x the same order needs 2,000
        vm.expectRevert(abi.encodeWithSelector(Exchange.InsufficientMargin.selector, 2_000e6, int256(1_000e6)));
        openPosition(a, ETH, 10e18, 10);
        openPosition(a, ETH, 10e18, 20);
        // cross margin: a second market needs margin on the whole account
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.InsufficientMargin.selector, 1_005e6, int256(999_940_000))
        );
        openPosition(a, SOL, 1e18, 20);
    }

    function test_withdrawal_belowInitialMargin() public {
        address a = newPro("alice", 1_512e6);
        openPosition(a, ETH, 10e18, 20);
        vm.prank(a);
        ex.withdraw(500e6);
        assertEq(ex.collateralOf(a), int256(1_000e6));
        vm.prank(a);
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.WithdrawalBelowInitialMargin.selector, 1_000e6, int256(999e6))
        );
        ex.withdraw(1e6);
        // the requirement follows the tier: uncertified, the account is a novice (3x)
        uncertify(a);
        vm.prank(a);
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.WithdrawalBelowInitialMargin.selector, 6_666_666_667, int256(999e6))
        );
        ex.withdraw(1e6);
        // a flat account withdraws everything
        closePosition(a, ETH);
        int256 c = ex.collateralOf(a);
        uint256 before = bal(a);
        vm.prank(a);
        ex.withdraw(uint256(c));
        assertEq(bal(a) - before, uint256(c), "paid out");
        assertEq(ex.collateralOf(a), 0);
        assertEq(bal(address(ex)), 0, "exchange empty");
    }

    function test_withdrawal_unrealizedProfitCountsButIsNotWithdrawable() public {
        address a = newPro("alice", 1_012e6);
        openPosition(a, ETH, 10e18, 20);
        setPrice(ETH, 2_100e8); // +1,000 unrealized
        // collateral is only 1,000: the profit is not collateral until realized
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(Exchange.InsufficientCollateral.selector, int256(1_000e6), 1_001e6));
        ex.withdraw(1_001e6);
        // but it backs the margin: 950 leaves AV 1,050 >= 21,000/20
        vm.prank(a);
        ex.withdraw(950e6);
        assertEq(ex.accountValue(a), int256(1_050e6));
    }

    function test_insufficientCollateral() public {
        address a = makeAddr("alice");
        fundTrader(a, 100e6);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(Exchange.InsufficientCollateral.selector, int256(100e6), 101e6));
        ex.withdraw(101e6);
    }

    // ------------------------------------------------------------------ system layer

    function test_openInterestCap_longAndShort() public {
        vm.prank(riskAdmin);
        ex.setMarketCaps(ETH, 30_000e6, 20_000e6);
        address a = newPro("alice", 5_000e6);
        address b = newPro("bob", 5_000e6);
        openPosition(a, ETH, 15e18, 20); // long OI 30,000: at the cap
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.OpenInterestCapExceeded.selector, ETH, true, 30_000e6, 32_000e6)
        );
        openPosition(b, ETH, 1e18, 20);
        openPosition(b, ETH, -10e18, 20); // short OI 20,000: at the cap
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.OpenInterestCapExceeded.selector, ETH, false, 20_000e6, 22_000e6)
        );
        openPosition(b, ETH, -1e18, 20);
        // other markets are not affected
        openPosition(b, SOL, 10e18, 20);
    }

    /// Caps are per side: an order that only adds shorts is judged by the short cap, even when the
    /// long side is over its own (lowered) cap — and the error names the side of the order.
    function test_openInterestCap_onlyTheIncreasedSideIsChecked() public {
        address a = newPro("alice", 5_000e6);
        address b = newPro("bob", 5_000e6);
        openPosition(a, ETH, 15e18, 20); // long 30,000
        vm.prank(riskAdmin);
        ex.setMarketCaps(ETH, 10_000e6, 20_000e6); // long side now over its cap
        openPosition(b, ETH, -1e18, 20); // short side 2,000 <= 20,000: must pass
        assertEq(sizeOf(b, ETH), -1e18, "short opened");
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.OpenInterestCapExceeded.selector, ETH, true, 10_000e6, 34_000e6)
        );
        openPosition(b, ETH, 3e18, 20); // flips bob to +2 long: long side judged
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.OpenInterestCapExceeded.selector, ETH, false, 20_000e6, 22_000e6)
        );
        openPosition(b, ETH, -10e18, 20);
    }

    function test_globalOpenInterestCap() public {
        Exchange.RiskParams memory p = riskParams();
        p.globalOiCap = 50_000e6;
        ex.setRiskParams(p);
        address a = newPro("alice", 5_000e6);
        address b = newPro("bob", 5_000e6);
        openPosition(a, ETH, 15e18, 20); // 30,000
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.GlobalOpenInterestCapExceeded.selector, 50_000e6, 54_000e6)
        );
        openPosition(b, BTC, 0.4e18, 20); // +24,000
        openPosition(b, BTC, 0.3e18, 20); // +18,000 -> 48,000
        assertEq(ex.globalOpenInterest(), 48_000e6);
    }

    // ------------------------------------------------------------------ position arithmetic

    function test_averageEntry_roundsAgainstTheTrader() public {
        address a = newPro("alice", 10_000e6);
        address b = newPro("bob", 10_000e6);
        openPosition(a, ETH, 1e18, 10);
        openPosition(b, ETH, -1e18, 10);
        setPrice(ETH, 2_001e8);
        openPosition(a, ETH, 2e18, 10);
        openPosition(b, ETH, -2e18, 10);
        // (2000 + 2·2001) / 3 = 2000.666...: up for the long, down for the short
        assertEq(ex.positionOf(a, ETH).entryPrice, 2_000_666_666_666_666_666_667, "long entry rounded up");
        assertEq(ex.positionOf(b, ETH).entryPrice, 2_000_666_666_666_666_666_666, "short entry rounded down");
    }

    function test_reduceRealizesPnl_flipReentersAtMark() public {
        address a = newPro("alice", 10_000e6);
        openPosition(a, ETH, 4e18, 10); // fee 4.8
        setPrice(ETH, 2_100e8);
        int256 c0 = ex.collateralOf(a);
        openPosition(a, ETH, -1e18, 10); // realizes +100, fee 1.26
        assertEq(ex.collateralOf(a) - c0, 100e6 - 1.26e6, "realized on the reduced part only");
        assertEq(ex.positionOf(a, ETH).entryPrice, 2_000e18, "entry kept on a reduction");
        c0 = ex.collateralOf(a);
        openPosition(a, ETH, -5e18, 10); // closes 3 (+300), opens 2 short at 2100; fee 6.30
        assertEq(ex.collateralOf(a) - c0, 300e6 - 6.3e6, "flip realizes the closed part");
        assertEq(sizeOf(a, ETH), -2e18);
        assertEq(ex.positionOf(a, ETH).entryPrice, 2_100e18, "flip re-enters at mark");
        (uint256 l, uint256 s,,) = ex.openInterest(ETH);
        assertEq(l, 0);
        assertEq(s, 2e18);
    }

    function test_depositFor_repaysDebtFirst() public {
        // a negative balance (cross-margin liquidation) is repaid by the next deposit, to the vault
        address a = newPro("alice", 2_530e6);
        openPosition(a, ETH, 10e18, 20);
        openPosition(a, BTC, 0.5e18, 20);
        setPrice(BTC, 62_000e8);
        setPrice(ETH, 1_680e8);
        vm.prank(keeper);
        ex.liquidate(a, ETH);
        assertEq(ex.collateralOf(a), -700e6);
        uint256 vaultBefore = bal(address(vault));
        address friend = makeAddr("friend");
        mint(friend, 1_000e6);
        vm.startPrank(friend);
        usdc.approve(address(ex), 1_000e6);
        vm.expectEmit(true, true, true, true, address(ex));
        emit Exchange.Deposited(a, friend, 1_000e6, 300e6);
        ex.depositFor(a, 1_000e6);
        vm.stopPrank();
        assertEq(ex.collateralOf(a), 300e6);
        assertEq(bal(address(vault)) - vaultBefore, 700e6, "the debt goes to the vault");
        assertEq(bal(address(ex)), 300e6);
    }

    // ------------------------------------------------------------------ inputs

    function test_priceSlippage() public {
        address a = newPro("alice", 10_000e6);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(Exchange.PriceSlippage.selector, 2_000e18, 1_999e18));
        ex.trade(ETH, 1e18, 5, 1_999e18);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(Exchange.PriceSlippage.selector, 2_000e18, 2_001e18));
        ex.trade(ETH, -1e18, 5, 2_001e18);
        vm.prank(a);
        ex.trade(ETH, 1e18, 5, 2_000e18);
        vm.prank(a);
        ex.trade(ETH, -2e18, 5, 2_000e18);
        assertEq(sizeOf(a, ETH), -1e18);
    }

    function test_unknownMarket() public {
        address a = newPro("alice", 1_000e6);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(Exchange.UnknownMarket.selector, 7));
        ex.trade(7, 1e18, 2, 0);
        vm.expectRevert(abi.encodeWithSelector(Exchange.UnknownMarket.selector, 7));
        ex.settleFunding(7);
        vm.expectRevert(abi.encodeWithSelector(Exchange.UnknownMarket.selector, 7));
        ex.autoDeleverage(7, a, 1);
        vm.prank(riskAdmin);
        vm.expectRevert(abi.encodeWithSelector(Exchange.UnknownMarket.selector, 3));
        ex.setMarketCaps(3, 1, 1);
    }

    function test_invalidLeverage_and_zeroAmount() public {
        address a = newNovice("alice", 1_000e6);
        vm.expectRevert(abi.encodeWithSelector(Exchange.InvalidLeverage.selector, 0));
        openPosition(a, ETH, 0.1e18, 0);
        vm.expectRevert(abi.encodeWithSelector(Exchange.ZeroAmount.selector));
        openPosition(a, ETH, 0, 2);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(Exchange.ZeroAmount.selector));
        ex.deposit(0);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(Exchange.ZeroAmount.selector));
        ex.withdraw(0);
    }

    function test_badParameters() public {
        vm.expectRevert(Exchange.BadParameter.selector);
        ex.listMarket("X", 0, 1, 1);
        vm.expectRevert(Exchange.BadParameter.selector);
        ex.listMarket("X", 10_000, 1, 1);
        Exchange.RiskParams memory p = riskParams();
        p.fundFeeBps = p.tradingFeeBps + 1;
        vm.expectRevert(Exchange.BadParameter.selector);
        ex.setRiskParams(p);
        p = riskParams();
        p.targetBps = p.liquidationBps;
        vm.expectRevert(Exchange.BadParameter.selector);
        ex.setRiskParams(p);
        p = riskParams();
        p.adlTargetBps = p.adlTriggerBps;
        vm.expectRevert(Exchange.BadParameter.selector);
        ex.setRiskParams(p);
        p = riskParams();
        p.fundingPeriod = 0;
        vm.expectRevert(Exchange.BadParameter.selector);
        ex.setRiskParams(p);
        vm.prank(riskAdmin);
        vm.expectRevert(Exchange.BadParameter.selector);
        ex.setTierLimits(Exchange.Tier.Novice, 0, 1);
        address[] memory accts = new address[](1);
        uint256[] memory mkts = new uint256[](2);
        vm.expectRevert(Exchange.LengthMismatch.selector);
        ex.liquidateBatch(accts, mkts);
    }

    function test_tierLimitsAreSettable() public {
        vm.prank(riskAdmin);
        ex.setTierLimits(Exchange.Tier.Novice, 2, 1_000e6);
        address a = newNovice("alice", 1_000e6);
        vm.expectRevert(abi.encodeWithSelector(Exchange.LeverageTooHigh.selector, Exchange.Tier.Novice, 2, 3));
        openPosition(a, ETH, 0.1e18, 3);
        vm.expectRevert(
            abi.encodeWithSelector(Exchange.OrderTooLarge.selector, Exchange.Tier.Novice, 1_000e6, 1_200e6)
        );
        openPosition(a, ETH, 0.6e18, 2);
    }

    // ------------------------------------------------------------------ roles

    function _unauthorized(address who, bytes32 role) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, who, role);
    }

    function test_roles_exchangeAdmin() public {
        address mallory = makeAddr("mallory");
        bytes32 adminRole = ex.DEFAULT_ADMIN_ROLE();
        vm.prank(mallory);
        vm.expectRevert(_unauthorized(mallory, adminRole));
        ex.listMarket("DOGE", 200, 1, 1);
        Exchange.RiskParams memory p = riskParams();
        vm.prank(riskAdmin);
        vm.expectRevert(_unauthorized(riskAdmin, adminRole));
        ex.setRiskParams(p);
        // the admin can
        uint256 id = ex.listMarket("DOGE", 200, 1, 1);
        assertEq(id, 3);
        assertEq(ex.marketCount(), 4);
    }

    function test_roles_riskAdmin() public {
        address a = makeAddr("alice");
        bytes32 riskRole = ex.RISK_ADMIN_ROLE();
        // not even the default admin holds the risk-admin role
        vm.expectRevert(_unauthorized(admin, riskRole));
        ex.setCertified(a, true);
        vm.expectRevert(_unauthorized(admin, riskRole));
        ex.setEducation(a, true);
        vm.expectRevert(_unauthorized(admin, riskRole));
        ex.setMarketCaps(ETH, 1, 1);
        vm.expectRevert(_unauthorized(admin, riskRole));
        ex.setTierLimits(Exchange.Tier.Novice, 1, 1);
        vm.prank(a);
        vm.expectRevert(_unauthorized(a, riskRole));
        ex.setCertified(a, true);
        assertFalse(ex.certified(a));
        assertFalse(ex.educated(a));
        vm.expectEmit(true, true, true, true, address(ex));
        emit Exchange.EducationSet(a, true);
        educate(a);
        assertTrue(ex.educated(a));
    }

    function test_roles_guardianPauses() public {
        bytes32 g = oracle.GUARDIAN_ROLE();
        vm.expectRevert(_unauthorized(admin, g));
        oracle.setPaused(ETH, true);
        address mallory = makeAddr("mallory");
        vm.prank(mallory);
        vm.expectRevert(_unauthorized(mallory, g));
        oracle.setPaused(ETH, true);
        vm.prank(guardian);
        oracle.setPaused(ETH, true);
        (bool ok,) = oracle.tryMarkPrice(ETH);
        assertFalse(ok, "paused by the guardian");
        // feeds and breaker parameters are the admin's, not the guardian's
        bytes32 a = oracle.DEFAULT_ADMIN_ROLE();
        vm.prank(guardian);
        vm.expectRevert(_unauthorized(guardian, a));
        oracle.setBreakerParams(300, 1000, 900);
    }

    function test_roles_onlyExchangeMovesVaultAndFundMoney() public {
        address mallory = makeAddr("mallory");
        bytes32 vr = vault.EXCHANGE_ROLE();
        bytes32 fr = fund.EXCHANGE_ROLE();
        vm.startPrank(mallory);
        vm.expectRevert(_unauthorized(mallory, vr));
        vault.pay(mallory, 1e6);
        vm.expectRevert(_unauthorized(mallory, vr));
        vault.recordSocializedLoss(mallory, 1e6);
        vm.expectRevert(_unauthorized(mallory, fr));
        fund.coverBadDebt(mallory, mallory, 1e6);
        vm.expectRevert(_unauthorized(mallory, fr));
        fund.recordIncome(InsuranceFund.IncomeKind.TradingFee, mallory, 1e6);
        vm.stopPrank();
        // the admin of vault and fund is not the exchange either
        vm.expectRevert(_unauthorized(admin, vr));
        vault.pay(admin, 1e6);
        vm.expectRevert(_unauthorized(admin, fr));
        fund.coverBadDebt(admin, admin, 1e6);
        assertEq(bal(mallory), 0);
        assertEq(bal(address(vault)), vaultSeed());
        assertEq(bal(address(fund)), fundSeed());
    }

    function test_vault_deposit_withdraw_shares() public {
        address p = makeAddr("provider");
        mint(p, 1_000e6);
        vm.startPrank(p);
        usdc.approve(address(vault), type(uint256).max);
        uint256 shares = vault.deposit(1_000e6);
        assertEq(shares, 1_000e6, "1:1 while the vault has no PnL");
        uint256 out = vault.withdraw(shares);
        vm.stopPrank();
        assertEq(out, 1_000e6);
        assertEq(bal(p), 1_000e6);
        vm.expectRevert(LiquidityVault.ZeroAmount.selector);
        vault.deposit(0);
    }
}
