// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {Exchange} from "../src/Exchange.sol";
import {LiquidityVault} from "../src/LiquidityVault.sol";

/// @notice Auto-deleveraging on a small vault: triggered when traders' net unrealized profit in a market
/// exceeds 45% of the vault's assets, goes on (hysteresis) until it is back under 40%; reduces a
/// profitable position at mark without fee; the rank score is published.
contract AdlTest is Fixture {
    address internal alice;

    function vaultSeed() internal pure override returns (uint256) {
        return 20_000e6;
    }

    function setUp() public override {
        super.setUp();
        // 20 ETH long at 2000, 20x: collateral 2,000 after the 24 fee (16 of it to the vault)
        alice = newPro("alice", 2_024e6);
        openPosition(alice, ETH, 20e18, 20);
        assertEq(ex.collateralOf(alice), int256(2_000e6));
        assertEq(bal(address(vault)), 20_016e6);
    }

    function _adl(address a, uint256 size) internal {
        vm.prank(keeper);
        ex.autoDeleverage(ETH, a, size);
    }

    function test_adl_hysteresis_45_then_40() public {
        setPriceCalm(ETH, 2_400e8); // 8,000 / 20,016 = 39.97%
        (int256 pnl, uint256 assets, bool active) = ex.adlState(ETH);
        assertEq(pnl, 8_000e6);
        assertEq(assets, 20_016e6);
        assertFalse(active);
        vm.expectRevert(abi.encodeWithSelector(Exchange.AdlNotTriggered.selector, ETH, int256(8_000e6), 20_016e6));
        _adl(alice, 1e18);

        setPrice(ETH, 2_500e8); // 10,000 / 20,016 = 49.96%
        uint256 feeIncome = fund.totalFeeIncome();
        uint256 fundBal = bal(address(fund));
        vm.expectEmit(true, true, true, true, address(ex));
        emit Exchange.AdlStateChanged(ETH, true, 9_000e6, 19_016e6);
        vm.expectEmit(true, true, true, true, address(ex));
        // rank: (2500/2000) · (50,000 / AV 12,000)
        emit Exchange.AutoDeleveraged(
            alice, ETH, -2e18, 2_500e18, 1_000e6, 5_208_333_333_333_333_333, 9_000e6, 19_016e6
        );
        _adl(alice, 2e18);
        assertEq(sizeOf(alice, ETH), 18e18);
        assertEq(ex.collateralOf(alice), int256(3_000e6), "realized at mark, no fee");
        assertEq(fund.totalFeeIncome(), feeIncome, "no fee income");
        assertEq(bal(address(fund)), fundBal);
        assertEq(bal(address(vault)), 19_016e6, "the vault paid the realized profit");
        (,, active) = ex.adlState(ETH);
        assertTrue(active, "active above 40%");

        // 44.4%: under the trigger, but still active -> allowed
        _adl(alice, 2e18);
        (pnl, assets, active) = ex.adlState(ETH);
        assertEq(pnl, 8_000e6);
        assertEq(assets, 18_016e6);
        assertTrue(active);
        _adl(alice, 2e18); // 7,000 / 17,016 = 41.1%
        vm.expectEmit(true, true, true, true, address(ex));
        emit Exchange.AdlStateChanged(ETH, false, 6_500e6, 16_516e6);
        _adl(alice, 1e18); // 6,500 / 16,516 = 39.4%: done
        (,, active) = ex.adlState(ETH);
        assertFalse(active);
        vm.expectRevert(abi.encodeWithSelector(Exchange.AdlNotTriggered.selector, ETH, int256(6_500e6), 16_516e6));
        _adl(alice, 1e18);

        // back between 40% and 45%: inactive stays inactive
        setPrice(ETH, 2_530e8); // 6,890 / 16,516 = 41.7%
        vm.expectRevert(abi.encodeWithSelector(Exchange.AdlNotTriggered.selector, ETH, int256(6_890e6), 16_516e6));
        _adl(alice, 1e18);
        // above 45% again
        setPrice(ETH, 2_600e8); // 7,800 / 16,516 = 47.2%
        vm.expectEmit(true, true, true, true, address(ex));
        emit Exchange.AdlStateChanged(ETH, true, 7_200e6, 15_916e6);
        _adl(alice, 1e18);
        assertEq(sizeOf(alice, ETH), 12e18);
        address[] memory accts = new address[](1);
        accts[0] = alice;
        assertEq(bal(address(ex)), heldFor(accts));
    }

    function test_adl_onlyProfitablePositions() public {
        address bob = newPro("bob", 1_000e6);
        openPosition(bob, ETH, -1e18, 20);
        address carol = newPro("carol", 1_000e6);
        setPriceCalm(ETH, 2_500e8);
        (int256 pnl, uint256 assets,) = ex.adlState(ETH);
        assertEq(pnl, 9_500e6, "net of bob's loss");
        assertEq(assets, 20_016.8e6);
        vm.expectRevert(abi.encodeWithSelector(Exchange.AdlPositionNotProfitable.selector, bob, ETH));
        _adl(bob, 1e18);
        vm.expectRevert(abi.encodeWithSelector(Exchange.AdlPositionNotProfitable.selector, carol, ETH));
        _adl(carol, 1e18);
        vm.expectRevert(abi.encodeWithSelector(Exchange.ZeroAmount.selector));
        _adl(alice, 0);
        // a size beyond the position closes it
        _adl(alice, 100e18);
        assertEq(sizeOf(alice, ETH), 0);
        assertEq(ex.collateralOf(alice), int256(12_000e6));
        assertEq(ex.openMarketsMask(alice), 0);
        (pnl,,) = ex.adlState(ETH);
        assertEq(pnl, -500e6);
    }

    /// The vault cannot pay more than it holds: a close whose realized profit exceeds the vault's assets
    /// reverts with VaultInsufficientAssets (a solvency limit, not a cap) — the state ADL exists to prevent.
    function test_vaultCannotPayMoreThanItHolds() public {
        setPriceCalm(ETH, 3_100e8); // +22,000 against 20,016 of assets
        // close: collateral 2,000 -> 23,962.80 (fee 37.20), plus the fund's 12.40 share of the fee
        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(LiquidityVault.VaultInsufficientAssets.selector, 20_016e6, 21_975.2e6)
        );
        ex.trade(ETH, -20e18, 1, 0);
        // ADL is available and brings the book back within what the vault can pay
        _adl(alice, 10e18);
        assertEq(sizeOf(alice, ETH), 10e18);
        assertEq(bal(address(vault)), 20_016e6 - 11_000e6);
    }

    function test_adl_needsAValidPrice() public {
        setPriceCalm(ETH, 2_500e8);
        vm.prank(guardian);
        oracle.setPaused(ETH, true);
        vm.expectRevert(abi.encodeWithSelector(Exchange.MarketPaused.selector, ETH));
        _adl(alice, 1e18);
    }
}

/// @notice The mirror: profitable shorts in a falling market.
contract AdlShortTest is Fixture {
    function vaultSeed() internal pure override returns (uint256) {
        return 20_000e6;
    }

    function test_adl_reducesProfitableShort() public {
        address a = newPro("alice", 2_024e6);
        openPosition(a, ETH, -20e18, 20);
        setPriceCalm(ETH, 1_500e8); // +10,000 for the short: 49.96%
        vm.expectEmit(true, true, true, true, address(ex));
        // rank: (2000/1500) · (30,000 / 12,000) = 3.333...
        emit Exchange.AutoDeleveraged(a, ETH, 2e18, 1_500e18, 1_000e6, 3_333_333_333_333_333_332, 9_000e6, 19_016e6);
        vm.prank(keeper);
        ex.autoDeleverage(ETH, a, 2e18);
        assertEq(sizeOf(a, ETH), -18e18);
        assertEq(ex.collateralOf(a), int256(3_000e6));
    }
}

/// @notice A deleverage that leaves the account flat with a negative balance is bad debt like any
/// other: the waterfall (fund, then socialized) must run, not leave a silent negative balance.
contract AdlBadDebtTest is Fixture {
    function vaultSeed() internal pure override returns (uint256) {
        return 20_000e6;
    }

    function test_adl_flatWithNegativeBalance_settlesBadDebt() public {
        address bob = newPro("bob", 4_452.8e6);
        openPosition(bob, ETH, 20e18, 20); // 40,000
        openPosition(bob, BTC, 0.8e18, 20); // 48,000
        assertEq(ex.collateralOf(bob), int256(4_400e6));
        setPriceCalm(ETH, 2_600e8); // ETH +12,000
        setPriceCalm(BTC, 38_000e8); // BTC -17,600: AV -1,200
        assertEq(ex.accountValue(bob), -1_200e6);
        // the keeper closes the losing market first: the account keeps a -13,200 balance against ETH's profit
        vm.prank(keeper);
        ex.liquidate(bob, BTC);
        assertEq(ex.collateralOf(bob), -13_200e6);
        (int256 pnl, uint256 assets,) = ex.adlState(ETH);
        assertEq(pnl, 12_000e6);
        assertGt(pnl * 10_000, int256(assets * 4_500), "ADL triggered");
        uint256 fundBefore = bal(address(fund));
        // then deleverages the profitable ETH position in full: flat, -1,200
        vm.prank(keeper);
        ex.autoDeleverage(ETH, bob, 20e18);
        assertEq(sizeOf(bob, ETH), 0);
        assertEq(ex.openMarketsMask(bob), 0);
        assertEq(ex.collateralOf(bob), 0, "flat accounts keep no debt");
        assertEq(ex.totalBadDebt(), 1_200e6, "recorded as bad debt");
        assertEq(fundBefore - bal(address(fund)), 1_200e6, "paid by the fund");
    }
}
