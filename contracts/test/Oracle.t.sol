// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {Exchange} from "../src/Exchange.sol";
import {OracleHub} from "../src/OracleHub.sol";
import {IAggregatorV3} from "../src/interfaces/IAggregatorV3.sol";

/// @notice Market layer prices: median mark, rejected answers (stale, non-positive, round 0, future),
/// guardian pause, circuit breaker (reduce-only, reductions and liquidations still allowed).
contract OracleTest is Fixture {
    function _invalid(uint256 m, OracleHub.Source src, OracleHub.Reason r) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(OracleHub.OracleInvalid.selector, m, src, r);
    }

    /// The market is unusable: views say so, trading reverts MarketPaused.
    function _assertPaused(uint256 m, OracleHub.Source src, OracleHub.Reason r) internal {
        vm.expectRevert(_invalid(m, src, r));
        oracle.markPrice(m);
        (bool ok, uint256 p) = oracle.tryMarkPrice(m);
        assertFalse(ok, "tryMarkPrice not ok");
        assertEq(p, 0, "no price");
        assertEq(uint8(oracle.status(m)), uint8(OracleHub.Status.Paused), "status Paused");
        (bool rok, uint256 rmark, OracleHub.Status st) = oracle.refresh(m);
        assertFalse(rok, "refresh not ok");
        assertEq(rmark, 0);
        assertEq(uint8(st), uint8(OracleHub.Status.Paused));
        address t = makeAddr("probe");
        certify(t);
        vm.prank(t);
        vm.expectRevert(abi.encodeWithSelector(Exchange.MarketPaused.selector, m));
        ex.trade(m, 1e15, 1, 0);
    }

    // ------------------------------------------------------------------ mark price

    function test_mark_isMedianOfPrimarySecondaryAndEma() public {
        assertEq(mark(ETH), 2_000e18, "both feeds agree");
        skip(60);
        // EMA projected 60/600 of the way from 2000 to 2100: 2010
        primaryFeed[ETH].setAnswer(2_100e8);
        secondaryFeed[ETH].setAnswer(2_200e8);
        assertEq(mark(ETH), 2_100e18, "median(2100, 2200, 2010)");
        secondaryFeed[ETH].setAnswer(2_050e8);
        assertEq(mark(ETH), 2_050e18, "median(2100, 2050, 2010)");
        secondaryFeed[ETH].setAnswer(1_900e8);
        assertEq(mark(ETH), 2_010e18, "median(2100, 1900, ema 2010)");
        // the view and a refresh in the same block agree to the wei
        (bool ok, uint256 m1,) = oracle.refresh(ETH);
        assertTrue(ok);
        assertEq(m1, 2_010e18, "refresh mark");
        assertEq(oracle.feed(ETH).ema, 2_010e18, "stored EMA");
        // after a full EMA window the EMA has caught up with the primary
        skip(600);
        primaryFeed[ETH].setAnswer(2_100e8);
        secondaryFeed[ETH].setAnswer(1_900e8);
        assertEq(mark(ETH), 2_100e18, "EMA = primary after a full window");
    }

    function test_readSource_scalesTo1e18() public view {
        (uint256 p, OracleHub.Reason r) = oracle.readSource(BTC, OracleHub.Source.Secondary);
        assertEq(p, 60_000e18);
        assertEq(uint8(r), uint8(OracleHub.Reason.None));
    }

    // ------------------------------------------------------------------ rejected answers

    function test_stale_primary() public {
        skip(HEARTBEAT);
        assertEq(mark(ETH), 2_000e18, "exactly heartbeat old: still valid");
        skip(1);
        _assertPaused(ETH, OracleHub.Source.Primary, OracleHub.Reason.Stale);
    }

    function test_stale_secondary() public {
        skip(HEARTBEAT + 1);
        primaryFeed[ETH].setAnswer(2_000e8);
        _assertPaused(ETH, OracleHub.Source.Secondary, OracleHub.Reason.Stale);
        secondaryFeed[ETH].setAnswer(2_000e8);
        assertEq(mark(ETH), 2_000e18, "fresh again");
    }

    function test_zero_and_negative_answers() public {
        primaryFeed[ETH].setAnswer(0);
        _assertPaused(ETH, OracleHub.Source.Primary, OracleHub.Reason.NonPositive);
        primaryFeed[ETH].setAnswer(-1);
        _assertPaused(ETH, OracleHub.Source.Primary, OracleHub.Reason.NonPositive);
        primaryFeed[ETH].setAnswer(2_000e8);
        secondaryFeed[ETH].setAnswer(0);
        _assertPaused(ETH, OracleHub.Source.Secondary, OracleHub.Reason.NonPositive);
    }

    function test_roundZero() public {
        primaryFeed[ETH].setRoundData(2_000e8, 0, block.timestamp);
        _assertPaused(ETH, OracleHub.Source.Primary, OracleHub.Reason.RoundZero);
        primaryFeed[ETH].setRoundData(2_000e8, 7, block.timestamp);
        secondaryFeed[ETH].setRoundData(2_000e8, 0, block.timestamp);
        _assertPaused(ETH, OracleHub.Source.Secondary, OracleHub.Reason.RoundZero);
    }

    function test_answerFromTheFuture() public {
        primaryFeed[ETH].setRoundData(2_000e8, 9, block.timestamp + 1);
        _assertPaused(ETH, OracleHub.Source.Primary, OracleHub.Reason.FromFuture);
        primaryFeed[ETH].setRoundData(2_000e8, 10, block.timestamp);
        assertEq(mark(ETH), 2_000e18, "valid again");
    }

    function test_noFeed() public {
        vm.expectRevert(_invalid(9, OracleHub.Source.Primary, OracleHub.Reason.NoFeed));
        oracle.markPrice(9);
        vm.expectRevert(abi.encodeWithSelector(OracleHub.UnknownFeed.selector, 9));
        oracle.refresh(9);
        vm.expectRevert(OracleHub.BadParameter.selector);
        oracle.setFeed(9, IAggregatorV3(address(0)), IAggregatorV3(address(secondaryFeed[ETH])), 60);
        vm.expectRevert(OracleHub.BadParameter.selector);
        oracle.setFeed(9, IAggregatorV3(address(primaryFeed[ETH])), IAggregatorV3(address(secondaryFeed[ETH])), 0);
    }

    function test_guardianPause_pausesTrading() public {
        address a = newPro("alice", 1_000e6);
        openPosition(a, ETH, 1e18, 10);
        vm.expectEmit(true, true, true, true, address(oracle));
        emit OracleHub.MarketPauseSet(ETH, true);
        vm.prank(guardian);
        oracle.setPaused(ETH, true);
        _assertPaused(ETH, OracleHub.Source.Primary, OracleHub.Reason.None);
        // reductions too: a paused market has no price to fill at
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(Exchange.MarketPaused.selector, ETH));
        ex.trade(ETH, -1e18, 1, 0);
        // account views that need the price say which market is unavailable
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(Exchange.OracleUnavailable.selector, ETH));
        ex.withdraw(1e6);
        vm.expectRevert(abi.encodeWithSelector(Exchange.OracleUnavailable.selector, ETH));
        ex.accountValue(a);
        vm.prank(guardian);
        oracle.setPaused(ETH, false);
        closePosition(a, ETH);
        assertEq(sizeOf(a, ETH), 0, "trading resumed");
    }

    function test_staleOracle_pausesMarket_otherMarketsTrade() public {
        address a = newPro("alice", 2_000e6);
        skip(HEARTBEAT + 1);
        setPrice(BTC, 60_000e8);
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(Exchange.MarketPaused.selector, ETH));
        ex.trade(ETH, 1e18, 10, 0);
        openPosition(a, BTC, 0.1e18, 10);
        assertEq(sizeOf(a, BTC), 0.1e18);
        // funding cannot settle on a stale market either
        vm.expectRevert(abi.encodeWithSelector(Exchange.MarketPaused.selector, ETH));
        ex.settleFunding(ETH);
    }

    function test_staleOracle_elsewhere_blocksIncreaseButNotOtherMarketReduction() public {
        address a = newPro("alice", 2_000e6);
        openPosition(a, ETH, 1e18, 10);
        openPosition(a, BTC, 0.01e18, 10);
        skip(HEARTBEAT + 1);
        setPrice(BTC, 60_000e8);
        // increasing BTC needs the account's value, which needs ETH's price
        vm.prank(a);
        vm.expectRevert(abi.encodeWithSelector(Exchange.OracleUnavailable.selector, ETH));
        ex.trade(BTC, 0.01e18, 10, 0);
        // reducing BTC needs only BTC's price
        closePosition(a, BTC);
        assertEq(sizeOf(a, BTC), 0);
    }

    function test_invalidOracle_liquidationSkipped() public {
        address a = newPro("alice", 1_012e6);
        openPosition(a, ETH, 10e18, 20);
        setPrice(ETH, 1_930e8);
        assertTrue(ex.isLiquidatable(a));
        vm.prank(guardian);
        oracle.setPaused(ETH, true);
        assertFalse(ex.isLiquidatable(a), "no valid price, no liquidation");
        address[] memory accts = new address[](1);
        uint256[] memory mkts = new uint256[](1);
        accts[0] = a;
        mkts[0] = ETH;
        vm.prank(keeper);
        assertEq(ex.liquidateBatch(accts, mkts), 0, "skipped");
        // the ratio in the error is the partial snapshot's (collateral over no margin): infinite
        vm.prank(keeper);
        vm.expectRevert(abi.encodeWithSelector(Exchange.NotLiquidatable.selector, a, type(uint256).max));
        ex.liquidate(a, ETH);
        assertEq(sizeOf(a, ETH), 10e18, "untouched");
    }

    // ------------------------------------------------------------------ circuit breaker

    function test_breaker_tripsAbove10pctWithin5Minutes() public {
        address a = newPro("alice", 10_000e6);
        address b = newPro("bob", 10_000e6);
        openPosition(a, ETH, 5e18, 10);
        skip(60);
        primaryFeed[ETH].setAnswer(2_201e8);
        secondaryFeed[ETH].setAnswer(2_201e8);
        assertEq(uint8(oracle.status(ETH)), uint8(OracleHub.Status.ReduceOnly), "view sees the move");
        vm.expectEmit(true, true, true, true, address(oracle));
        emit OracleHub.CircuitBreakerTripped(ETH, 2_000e18, 2_201e18, block.timestamp + 900);
        oracle.refresh(ETH);
        assertEq(uint8(oracle.status(ETH)), uint8(OracleHub.Status.ReduceOnly));

        vm.expectRevert(abi.encodeWithSelector(Exchange.MarketReduceOnly.selector, ETH));
        openPosition(a, ETH, 1e18, 10);
        vm.expectRevert(abi.encodeWithSelector(Exchange.MarketReduceOnly.selector, ETH));
        openPosition(b, ETH, -1e18, 10);
        vm.expectRevert(abi.encodeWithSelector(Exchange.MarketReduceOnly.selector, ETH));
        openPosition(a, ETH, -6e18, 10); // a flip adds risk
        // reductions go through
        openPosition(a, ETH, -2e18, 10);
        assertEq(sizeOf(a, ETH), 3e18, "reduced under reduce-only");
        // other markets are unaffected
        openPosition(b, BTC, 0.01e18, 10);

        // still reduce-only just before the cooldown ends, active at its end
        skip(899 - 60);
        refreshFeeds();
        vm.expectRevert(abi.encodeWithSelector(Exchange.MarketReduceOnly.selector, ETH));
        openPosition(b, ETH, -1e18, 10);
        skip(61);
        refreshFeeds();
        assertEq(uint8(oracle.status(ETH)), uint8(OracleHub.Status.Active), "cooldown over");
        openPosition(b, ETH, -1e18, 10);
        assertEq(sizeOf(b, ETH), -1e18);
    }

    function test_breaker_exactly10pct_doesNotTrip() public {
        skip(60);
        setPrice(ETH, 2_200e8);
        assertEq(uint8(oracle.status(ETH)), uint8(OracleHub.Status.Active), "10% is not more than 10%");
        assertEq(oracle.feed(ETH).breakerUntil, 0);
        skip(60);
        setPrice(ETH, 1_800e8);
        assertEq(uint8(oracle.status(ETH)), uint8(OracleHub.Status.Active), "-10% vs the window's reference");
    }

    function test_breaker_moveOutsideWindow_doesNotTrip() public {
        skip(301);
        setPrice(ETH, 2_500e8);
        assertEq(uint8(oracle.status(ETH)), uint8(OracleHub.Status.Active), "reference older than 5 minutes");
        assertEq(oracle.feed(ETH).refPrice, 2_500e18, "reference reset");
    }

    function test_breaker_downMove_trips() public {
        skip(299);
        setPrice(ETH, 1_799e8);
        assertEq(uint8(oracle.status(ETH)), uint8(OracleHub.Status.ReduceOnly));
    }

    function test_breaker_liquidationsStillRun() public {
        address a = newPro("alice", 4_012e6);
        openPosition(a, ETH, -10e18, 5); // 5x short, collateral 4,000
        skip(60);
        setPrice(ETH, 2_350e8); // +17.5% in a minute: breaker
        assertEq(uint8(oracle.status(ETH)), uint8(OracleHub.Status.ReduceOnly));
        // AV 500, MM 470: 106%
        assertEq(ex.accountValue(a), int256(500e6));
        assertEq(ex.marginRatioBps(a), 10_638);
        vm.prank(keeper);
        ex.liquidate(a, ETH);
        assertLt(sizeOf(a, ETH), 0, "partial");
        assertGt(sizeOf(a, ETH), -10e18, "partial");
        uint256 mr = ex.marginRatioBps(a);
        assertGe(mr, 15_000, "target reached");
        assertLe(mr, 15_001, "target within 1 bp");
        assertGt(bal(keeper), 0, "keeper paid");
    }

    function test_breakerParams() public {
        vm.expectRevert(OracleHub.BadParameter.selector);
        oracle.setBreakerParams(0, 100, 60);
        vm.expectRevert(OracleHub.BadParameter.selector);
        oracle.setBreakerParams(60, 0, 60);
        oracle.setBreakerParams(120, 500, 60); // 5% in 2 minutes, 1-minute cooldown
        skip(100);
        setPrice(ETH, 2_101e8);
        assertEq(uint8(oracle.status(ETH)), uint8(OracleHub.Status.ReduceOnly), "5.05% trips the tighter breaker");
        skip(60);
        refreshFeeds();
        assertEq(uint8(oracle.status(ETH)), uint8(OracleHub.Status.Active), "1-minute cooldown");
    }
}
