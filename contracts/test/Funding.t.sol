// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {Exchange} from "../src/Exchange.sol";

/// @notice Funding: hourly, hour-aligned settlement; rate = 0.01% · skew; the cumulative index;
/// positions pay/receive size · Δindex (rounded against the trader) on their next change; the vault
/// takes the difference between the two sides.
contract FundingTest is Fixture {
    uint256 internal constant PERIOD = 3_600;
    uint256 internal p0; // the period at listing

    address internal alice;
    address internal bob;

    function setUp() public override {
        super.setUp();
        p0 = START / PERIOD;
        alice = newPro("alice", 10_000e6);
        bob = newPro("bob", 10_000e6);
    }

    function _toPeriod(uint256 period) internal {
        vm.warp(period * PERIOD);
        refreshFeeds();
    }

    function _state(uint256 m) internal view returns (int256 index, uint256 lastPeriod, int256 lastRate) {
        (,,,, index, lastPeriod, lastRate,) = ex.marketState(m);
    }

    function test_fundingNotDue_atMostOncePerPeriod() public {
        (, uint256 last,) = _state(ETH);
        assertEq(last, p0, "listing period");
        vm.expectRevert(abi.encodeWithSelector(Exchange.FundingNotDue.selector, ETH, (p0 + 1) * PERIOD));
        ex.settleFunding(ETH);
        vm.warp((p0 + 1) * PERIOD - 1);
        vm.expectRevert(abi.encodeWithSelector(Exchange.FundingNotDue.selector, ETH, (p0 + 1) * PERIOD));
        ex.settleFunding(ETH);
        vm.warp((p0 + 1) * PERIOD);
        ex.settleFunding(ETH);
        (, last,) = _state(ETH);
        assertEq(last, p0 + 1);
        vm.expectRevert(abi.encodeWithSelector(Exchange.FundingNotDue.selector, ETH, (p0 + 2) * PERIOD));
        ex.settleFunding(ETH);
        vm.warp((p0 + 2) * PERIOD - 1);
        vm.expectRevert(abi.encodeWithSelector(Exchange.FundingNotDue.selector, ETH, (p0 + 2) * PERIOD));
        ex.settleFunding(ETH);
        // anyone may call
        vm.warp((p0 + 2) * PERIOD);
        refreshFeeds();
        vm.prank(makeAddr("anyone"));
        ex.settleFunding(ETH);
        (, uint256 dueAt) = ex.nextFunding(ETH);
        assertEq(dueAt, (p0 + 3) * PERIOD);
    }

    function test_rateIndexAndPayments_longHeavy() public {
        openPosition(alice, ETH, 10e18, 10);
        openPosition(bob, ETH, -5e18, 10);
        (int256 next, uint256 dueAt) = ex.nextFunding(ETH);
        // 1e14 · (10 − 5) / 15, truncated
        assertEq(next, 33_333_333_333_333, "rate = 0.01% x skew");
        assertEq(dueAt, (p0 + 1) * PERIOD);

        _toPeriod(p0 + 1);
        int256 delta = 66_666_666_666_666_000; // rate · 2000
        vm.expectEmit(true, true, true, true, address(ex));
        emit Exchange.FundingSettled(ETH, p0 + 1, 33_333_333_333_333, 2_000e18, delta, 10e18, 5e18);
        ex.settleFunding(ETH);
        (int256 index,, int256 rate) = _state(ETH);
        assertEq(index, delta, "index += rate x mark");
        assertEq(rate, 33_333_333_333_333);

        int256 ca = ex.collateralOf(alice);
        int256 cb = ex.collateralOf(bob);
        // pending funding is in the account value already: alice pays ceil(666,666.67), bob receives 333,333
        assertEq(ex.accountValue(alice), ca - 666_667, "long pays, rounded up");
        assertEq(ex.accountValue(bob), cb + 333_333, "short receives, rounded down");

        uint256 vaultBefore = bal(address(vault));
        openPosition(alice, ETH, -1e18, 10); // fee 1.20
        openPosition(bob, ETH, 1e18, 10); // fee 1.20
        assertEq(ex.collateralOf(alice), ca - 1.2e6 - 666_667, "alice settled on her next change");
        assertEq(ex.collateralOf(bob), cb - 1.2e6 + 333_333, "bob settled on his next change");
        // the vault keeps the fee's non-fund share (2 · 0.80) and the funding difference (666,667 − 333,333)
        assertEq(bal(address(vault)) - vaultBefore, 1.6e6 + 333_334, "vault takes the difference");
        // entry indexes reset: nothing more pending
        assertEq(ex.accountValue(alice), ex.collateralOf(alice));
        assertEq(ex.positionOf(alice, ETH).entryFundingIndex, delta);
        address[] memory accts = new address[](2);
        accts[0] = alice;
        accts[1] = bob;
        assertEq(bal(address(ex)), heldFor(accts), "exchange holds the collateral");
    }

    function test_multiplePeriods_useCurrentMark() public {
        openPosition(alice, ETH, 10e18, 10);
        openPosition(bob, ETH, -5e18, 10);
        _toPeriod(p0 + 3);
        setPrice(ETH, 2_100e8);
        ex.settleFunding(ETH);
        (int256 index, uint256 last,) = _state(ETH);
        assertEq(last, p0 + 3);
        // three periods at 33,333,333,333,333 · 2100
        assertEq(index, 3 * 69_999_999_999_999_300, "three periods elapsed");
        int256 pa = ex.collateralOf(alice) + 10 * 100e6 - ex.accountValue(alice);
        int256 pb = ex.collateralOf(bob) - 5 * 100e6 - ex.accountValue(bob);
        assertEq(pa, 2_100_000, "alice owes ceil(2,099,999.99...)");
        assertEq(pb, -1_049_999, "bob gets ceil(-1,049,999.99...)");
    }

    function test_shortHeavy_longsReceive() public {
        openPosition(alice, ETH, 2e18, 10);
        openPosition(bob, ETH, -8e18, 10);
        (int256 next,) = ex.nextFunding(ETH);
        assertEq(next, -60_000_000_000_000, "1e14 x (2 - 8) / 10");
        _toPeriod(p0 + 1);
        ex.settleFunding(ETH);
        (int256 index,,) = _state(ETH);
        assertEq(index, -120_000_000_000_000_000);
        int256 ca = ex.collateralOf(alice);
        int256 cb = ex.collateralOf(bob);
        closePosition(alice, ETH);
        closePosition(bob, ETH);
        // closing fees: 2·2000·0.06% = 2.4, 8·2000·0.06% = 9.6
        assertEq(ex.collateralOf(alice), ca - 2.4e6 + 240_000, "long receives 0.24");
        assertEq(ex.collateralOf(bob), cb - 9.6e6 - 960_000, "short pays 0.96");
    }

    function test_balancedOrEmpty_noFunding() public {
        _toPeriod(p0 + 1);
        ex.settleFunding(SOL); // empty market: rate 0, period advances
        (int256 idx, uint256 last, int256 rate) = _state(SOL);
        assertEq(idx, 0);
        assertEq(rate, 0);
        assertEq(last, p0 + 1);
        openPosition(alice, ETH, 3e18, 10);
        openPosition(bob, ETH, -3e18, 10);
        _toPeriod(p0 + 2);
        ex.settleFunding(ETH);
        (idx,, rate) = _state(ETH);
        assertEq(rate, 0, "balanced");
        assertEq(idx, 0);
        assertEq(ex.accountValue(alice), ex.collateralOf(alice));
    }

    function test_oneSidedMarket_paysMaxRate_toVault() public {
        openPosition(alice, ETH, 10e18, 10);
        _toPeriod(p0 + 1);
        ex.settleFunding(ETH);
        (int256 idx,, int256 rate) = _state(ETH);
        assertEq(rate, 1e14, "at most 0.01% an hour");
        assertEq(idx, 2e17);
        // 0.01% of 20,000 = 2.00
        assertEq(ex.collateralOf(alice) - ex.accountValue(alice), 2e6);
        uint256 vaultBefore = bal(address(vault));
        closePosition(alice, ETH);
        // fee 12 (8 to the vault) + funding 2
        assertEq(bal(address(vault)) - vaultBefore, 8e6 + 2e6);
    }

    function test_newPositionOwesNothingForPastPeriods() public {
        openPosition(alice, ETH, 10e18, 10);
        _toPeriod(p0 + 1);
        ex.settleFunding(ETH);
        openPosition(bob, ETH, 1e18, 10);
        assertEq(ex.accountValue(bob), ex.collateralOf(bob), "entered at the current index");
        (int256 idx,,) = _state(ETH);
        assertEq(ex.positionOf(bob, ETH).entryFundingIndex, idx);
    }

    function test_tinyPositions_roundAgainstTheTrader() public {
        openPosition(alice, ETH, 0.002e18, 10);
        openPosition(bob, ETH, -0.001e18, 10);
        _toPeriod(p0 + 1);
        ex.settleFunding(ETH);
        // index Δ 6.6667e16: alice 133.3 -> pays 134 units; bob −66.7 -> receives 66
        assertEq(ex.collateralOf(alice) - ex.accountValue(alice), 134);
        assertEq(ex.accountValue(bob) - ex.collateralOf(bob), 66);
    }

    function test_fundingCanMakeAnAccountLiquidatable() public {
        address c = newPro("carol", 1_012e6);
        openPosition(c, ETH, 10e18, 20); // 250%, alone on the long side: max rate
        setPrice(ETH, 1_942.75e8); // just above the line
        assertFalse(ex.isLiquidatable(c));
        _toPeriod(p0 + 1);
        ex.settleFunding(ETH); // 0.01% of 19,427.5 = 1.94
        assertTrue(ex.isLiquidatable(c), "pending funding counts");
    }
}
