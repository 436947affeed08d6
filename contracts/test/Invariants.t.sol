// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Fixture} from "./utils/Fixture.sol";
import {Handler} from "./utils/Handler.sol";
import {Exchange} from "../src/Exchange.sol";
import {OracleHub} from "../src/OracleHub.sol";
import {MockAggregator} from "../src/mocks/MockAggregator.sol";

/// @notice Shared checks of value conservation and book-keeping over the handler's actors.
abstract contract InvariantChecks is Fixture {
    Handler internal handler;

    function _deployHandler() internal {
        address[] memory actors = new address[](4);
        actors[0] = newPro("pro1", 0);
        actors[1] = newPro("pro2", 0);
        actors[2] = newNovice("nov1", 0);
        actors[3] = newNovice("nov2", 0);
        handler = new Handler(ex, primaryFeed, secondaryFeed, actors, keeper, riskAdmin);
        for (uint256 m; m < N_MARKETS; ++m) {
            primaryFeed[m].transferOwnership(address(handler));
            secondaryFeed[m].transferOwnership(address(handler));
        }
        for (uint256 i; i < actors.length; ++i) {
            vm.prank(actors[i]);
            usdc.approve(address(ex), type(uint256).max);
            fundTrader(actors[i], 1_000e6);
        }
    }

    function _checkAll() internal view {
        address[] memory actors = handler.actors();
        // 1. the exchange holds exactly Σ max(collateral, 0)
        assertEq(bal(address(ex)), heldFor(actors), "exchange balance = sum of positive collateral");
        // 2. no token is created or lost
        uint256 total = bal(address(ex)) + bal(address(vault)) + bal(address(fund)) + bal(keeper) + bal(lp)
            + bal(donor) + bal(address(this));
        for (uint256 i; i < actors.length; ++i) {
            total += bal(actors[i]);
        }
        assertEq(total, usdc.totalSupply(), "tokens across all holders = minted");
        // 3. market aggregates match the positions
        for (uint256 m; m < N_MARKETS; ++m) {
            (uint256 longSize, uint256 shortSize,,,,,,) = ex.marketState(m);
            uint256 l;
            uint256 s;
            for (uint256 i; i < actors.length; ++i) {
                int256 sz = ex.positionOf(actors[i], m).size;
                if (sz > 0) l += uint256(sz);
                else s += uint256(-sz);
                assertEq(ex.openMarketsMask(actors[i]) >> m & 1 == 1, sz != 0, "market mask");
            }
            assertEq(longSize, l, "long open interest = sum of longs");
            assertEq(shortSize, s, "short open interest = sum of shorts");
        }
        // 4. every bad debt is paid by the fund or socialized; the vault agrees
        assertEq(fund.totalPayouts() + ex.totalSocializedLoss(), ex.totalBadDebt(), "bad debt = paid + socialized");
        assertEq(vault.totalSocializedLoss(), ex.totalSocializedLoss(), "vault and exchange agree");
        // 5. the fund's balance is its published flows
        assertEq(
            bal(address(fund)),
            fund.totalDonations() + fund.totalFeeIncome() + fund.totalPenaltyIncome() - fund.totalPayouts(),
            "fund balance = donations + fees + penalties - payouts"
        );
        // 6. a flat account never carries a debt
        for (uint256 i; i < actors.length; ++i) {
            if (ex.openMarketsMask(actors[i]) == 0) assertGe(ex.collateralOf(actors[i]), 0, "flat => no debt");
        }
        // 7. ghosts: liquidations never added bad debt beyond -AV; reductions were never refused
        assertFalse(handler.badDebtViolation(), handler.violation());
        assertFalse(handler.reductionBlocked(), "a reduction was refused");
    }
}

/// @notice Random sequences and property fuzz tests.
contract ConservationFuzzTest is InvariantChecks {
    function setUp() public override {
        super.setUp();
        _deployHandler();
    }

    /// The handler really moves the book: a fixed long sequence trades, liquidates and creates bad debt.
    function test_handler_exercisesTheBook() public {
        for (uint256 i; i < 300; ++i) {
            handler.step(uint256(keccak256(abi.encode("zanbara", i))));
        }
        _checkAll();
        assertGt(handler.trades(), 50, "trades executed");
        assertGt(handler.liquidations(), 2, "liquidations executed");
        assertGt(ex.totalBadDebt(), 0, "bad debt reached");
    }

    /// forge-config: default.fuzz.runs = 64
    function testFuzz_valueConservation_randomSequence(uint256 seed) public {
        _checkAll();
        for (uint256 i; i < 24; ++i) {
            handler.step(uint256(keccak256(abi.encode(seed, i))));
            _checkAll();
        }
    }
}

contract PropertyFuzzTest is Fixture {
    /// A liquidation adds bad debt only when the account's value was negative, and never more than −AV;
    /// a solvent account (AV >= 0) leaves totalBadDebt unchanged. Two positions: cross margin included.
    function testFuzz_liquidation_badDebtOnlyFromNegativeAV(
        uint256 levSeed,
        uint256 usdSeed,
        bool ethLong,
        uint256 ethMoveSeed,
        uint256 btcMoveSeed,
        bool liquidateEthFirst
    ) public {
        address a = newPro("alice", 0);
        uint256 lev = bound(levSeed, 2, 20);
        uint256 usd = bound(usdSeed, 100e6, 40_000e6);
        fundTrader(a, (2 * usd) / lev + usd / 500 + 1e6);
        openPosition(a, ETH, (ethLong ? int256(1) : -1) * int256((usd * 1e30) / 2_000e18), lev);
        openPosition(a, BTC, int256((usd * 1e30) / 60_000e18), lev);
        // ETH moves -30%..+30%, BTC -30%..+30%
        setPrice(ETH, int256(bound(ethMoveSeed, 1_400e8, 2_600e8)));
        setPrice(BTC, int256(bound(btcMoveSeed, 42_000e8, 78_000e8)));
        uint256[2] memory order = liquidateEthFirst ? [ETH, BTC] : [BTC, ETH];
        for (uint256 i; i < 2; ++i) {
            if (!ex.isLiquidatable(a) || sizeOf(a, order[i]) == 0) continue;
            int256 av = ex.accountValue(a);
            uint256 debt0 = ex.totalBadDebt();
            vm.prank(keeper);
            ex.liquidate(a, order[i]);
            uint256 added = ex.totalBadDebt() - debt0;
            if (av >= 0) assertEq(added, 0, "solvent account: no bad debt");
            else assertLe(added, uint256(-av), "bad debt <= -AV");
            if (ex.openMarketsMask(a) == 0) {
                assertGe(ex.collateralOf(a), 0, "flat: debt settled");
                if (av < 0) assertEq(added, uint256(-av), "flat: the whole -AV is bad debt");
            }
        }
        assertEq(bal(address(ex)), ex.collateralOf(a) > 0 ? uint256(ex.collateralOf(a)) : 0, "exchange holds it");
    }

    /// Position reductions are never blocked by user- or system-layer caps, nor by the breaker: open,
    /// then lower every cap, revoke certification and education, trip the breaker, and reduce.
    function testFuzz_reductionsNeverBlocked(uint256 usdSeed, uint256 levSeed, bool isLong, uint256 fracSeed, bool up)
        public
    {
        address a = newPro("alice", 0);
        address b = newPro("bob", 0);
        uint256 lev = bound(levSeed, 1, 20);
        uint256 usd = bound(usdSeed, 200e6, 50_000e6);
        fundTrader(a, usd / lev + usd / 1_000 + 1e6);
        fundTrader(b, usd / lev + usd / 1_000 + 1e6);
        int256 size = int256((usd * 1e30) / 2_000e18);
        if (!isLong) size = -size;
        openPosition(a, ETH, size, lev);
        openPosition(b, ETH, -size, lev);

        // every cap down to (almost) nothing
        vm.startPrank(riskAdmin);
        ex.setMarketCaps(ETH, 0, 0);
        ex.setTierLimits(Exchange.Tier.Novice, 1, 0);
        ex.setTierLimits(Exchange.Tier.Professional, 1, 0);
        ex.setCertified(a, false);
        ex.setCertified(b, false);
        ex.setEducation(a, false);
        vm.stopPrank();
        Exchange.RiskParams memory p = riskParams();
        p.accountNotionalCap = 0;
        p.globalOiCap = 0;
        ex.setRiskParams(p);
        // and the breaker tripped (11% in a minute)
        skip(60);
        setPrice(ETH, up ? int256(2_220e8) : int256(1_780e8));
        assertEq(uint8(oracle.status(ETH)), uint8(OracleHub.Status.ReduceOnly), "breaker tripped");
        vm.expectRevert(abi.encodeWithSelector(Exchange.MarketReduceOnly.selector, ETH));
        openPosition(a, ETH, size / 10 == 0 ? size : size / 10, 1);

        uint256 frac = bound(fracSeed, 1, 100);
        int256 da = -(size * int256(frac)) / 100;
        if (da == 0) da = -size;
        openPosition(a, ETH, da, 1);
        assertEq(sizeOf(a, ETH), size + da, "alice reduced");
        openPosition(b, ETH, size, 7); // bob closes in full (leverage is not checked on reductions)
        assertEq(sizeOf(b, ETH), 0, "bob closed");
        address[] memory accts = new address[](2);
        accts[0] = a;
        accts[1] = b;
        assertEq(bal(address(ex)), heldFor(accts), "exchange holds the collateral");
    }
}

/// @notice The invariant campaign: forge calls the handler's actions in random order and checks after each.
contract ProtocolInvariantTest is InvariantChecks {
    function setUp() public override {
        super.setUp();
        _deployHandler();
    }

    function targetContracts() public view returns (address[] memory t) {
        t = new address[](1);
        t[0] = address(handler);
    }

    /// forge-config: default.invariant.runs = 32
    /// forge-config: default.invariant.depth = 32
    function invariant_protocol() public view {
        _checkAll();
    }
}
