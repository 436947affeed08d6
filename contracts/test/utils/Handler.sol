// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Vm, VM_ADDRESS} from "./Vm.sol";
import {Exchange} from "../../src/Exchange.sol";
import {OracleHub} from "../../src/OracleHub.sol";
import {MockUSDC} from "../../src/mocks/MockUSDC.sol";
import {MockAggregator} from "../../src/mocks/MockAggregator.sol";

/// @notice The actor handler for the invariant campaign and the random-sequence fuzz test: deposits,
/// withdrawals, trades (opens, reductions, flips), price moves (breaker included), liquidations (single
/// and batch), funding, time, certification changes. No action reverts: failing protocol calls are
/// caught, so a sequence always runs to its end. Ghost variables record what the invariants need.
contract Handler {
    Vm internal constant vm = Vm(VM_ADDRESS);

    Exchange public immutable ex;
    OracleHub public immutable oracle;
    MockUSDC public immutable usdc;
    address public immutable keeper;
    address public immutable riskAdmin;
    MockAggregator[3] internal primaryFeed;
    MockAggregator[3] internal secondaryFeed;
    address[] internal _actors;

    // ghosts
    uint256 public liquidations;
    uint256 public trades;
    /// Set when a liquidation added bad debt beyond max(−AV before, 0) — must never happen.
    bool public badDebtViolation;
    string public violation;
    /// Set when a reduction of an existing position reverted for a reason other than a paused market,
    /// a vault short of assets or a stale price elsewhere — must never happen.
    bool public reductionBlocked;
    bytes public reductionRevert;

    constructor(
        Exchange ex_,
        MockAggregator[3] memory p,
        MockAggregator[3] memory s,
        address[] memory actors_,
        address keeper_,
        address riskAdmin_
    ) {
        ex = ex_;
        oracle = ex_.oracle();
        usdc = MockUSDC(address(ex_.collateralToken()));
        primaryFeed = p;
        secondaryFeed = s;
        _actors = actors_;
        keeper = keeper_;
        riskAdmin = riskAdmin_;
    }

    function actors() external view returns (address[] memory) {
        return _actors;
    }

    function _bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        return lo + (x % (hi - lo + 1));
    }

    function _actor(uint256 seed) internal view returns (address) {
        return _actors[seed % _actors.length];
    }

    // ------------------------------------------------------------------ actions

    function deposit(uint256 actorSeed, uint256 amount) public {
        address a = _actor(actorSeed);
        amount = _bound(amount, 1, 500e6);
        usdc.faucet(a, amount);
        vm.prank(a);
        ex.deposit(amount);
    }

    function withdraw(uint256 actorSeed, uint256 amount) public {
        address a = _actor(actorSeed);
        int256 c = ex.collateralOf(a);
        if (c <= 0) return;
        amount = _bound(amount, 1, uint256(c));
        vm.prank(a);
        try ex.withdraw(amount) {} catch {}
    }

    /// Opens or adds (random side, notional up to the tier's order limit) at a random leverage up to the
    /// tier's maximum (often the maximum itself, so that price moves liquidate).
    function trade(uint256 actorSeed, uint256 marketSeed, uint256 usdSeed, bool isLong, uint256 levSeed) public {
        address a = _actor(actorSeed);
        uint256 m = marketSeed % 3;
        (bool ok, uint256 mark) = oracle.tryMarkPrice(m);
        if (!ok) return;
        (uint256 maxLev, uint256 maxOrder) = ex.tierLimits(ex.tierOf(a));
        uint256 lev = levSeed % 2 == 0 ? maxLev : _bound(levSeed >> 1, 1, maxLev);
        // mostly 80-100% of what the account can afford at that leverage (so accounts get levered and
        // price moves liquidate them), sometimes any size up to the order limit
        uint256 usd = _bound(usdSeed >> 2, 10e6, maxOrder);
        if (usdSeed % 4 != 0) {
            try ex.accountSummary(a) returns (Exchange.AccountSummary memory acc) {
                uint256 afford = acc.value > 0 ? uint256(acc.value) * lev : 0;
                afford = afford > acc.notional ? afford - acc.notional : 0;
                if (afford > maxOrder) afford = maxOrder;
                usd = (afford * (80 + ((usdSeed >> 2) % 21))) / 100;
            } catch {}
        }
        if (usd < 10e6) usd = 10e6;
        int256 size = int256((usd * 1e30) / mark);
        if (size == 0) return;
        vm.prank(a);
        try ex.trade(m, isLong ? size : -size, lev, 0) {
            ++trades;
        } catch {}
    }

    /// Reduces (never flips) an existing position by a random fraction; records any unexpected refusal.
    function reduce(uint256 actorSeed, uint256 marketSeed, uint256 fractionSeed) public {
        address a = _actor(actorSeed);
        uint256 m = marketSeed % 3;
        int256 s = ex.positionOf(a, m).size;
        if (s == 0) return;
        int256 d = (s * int256(_bound(fractionSeed, 1, 100))) / 100;
        if (d == 0) d = s;
        (bool ok,) = oracle.tryMarkPrice(m);
        vm.prank(a);
        try ex.trade(m, -d, 1, 0) {
            ++trades;
        } catch (bytes memory err) {
            // a paused market has no price to fill at; anything else is a blocked reduction
            if (ok) {
                reductionBlocked = true;
                reductionRevert = err;
            }
        }
    }

    /// Moves a market's price by up to ±6%, one time in eight by up to ±15% (which trips the breaker).
    function movePrice(uint256 marketSeed, uint256 bpsSeed, bool up) public {
        uint256 m = marketSeed % 3;
        int256 p = primaryFeed[m].answer();
        int256 bps = int256(_bound(bpsSeed >> 3, 0, bpsSeed % 8 == 0 ? 1_500 : 600));
        int256 next = up ? (p * (10_000 + bps)) / 10_000 : (p * (10_000 - bps)) / 10_000;
        if (next <= 0) next = 1;
        vm.warp(block.timestamp + 13);
        primaryFeed[m].setAnswer(next);
        secondaryFeed[m].setAnswer(next);
        oracle.refresh(m);
    }

    /// Lets time pass (up to 2 hours) and re-posts every feed, so markets stay priced.
    function warp(uint256 dtSeed) public {
        vm.warp(block.timestamp + _bound(dtSeed, 1, 2 hours));
        for (uint256 m; m < 3; ++m) {
            primaryFeed[m].setAnswer(primaryFeed[m].answer());
            secondaryFeed[m].setAnswer(secondaryFeed[m].answer());
            oracle.refresh(m);
        }
    }

    function settleFunding(uint256 marketSeed) public {
        try ex.settleFunding(marketSeed % 3) {} catch {}
    }

    /// Liquidates one account in one market: the first market from `marketSeed` on where it holds a position.
    function liquidate(uint256 actorSeed, uint256 marketSeed) public {
        address a = _actor(actorSeed);
        uint256 m = marketSeed % 3;
        for (uint256 i; i < 3 && ex.positionOf(a, m).size == 0; ++i) {
            m = (m + 1) % 3;
        }
        int256 av;
        try ex.accountValue(a) returns (int256 v) {
            av = v;
        } catch {
            return;
        }
        uint256 debt0 = ex.totalBadDebt();
        vm.prank(keeper);
        try ex.liquidate(a, m) {
            ++liquidations;
            uint256 added = ex.totalBadDebt() - debt0;
            uint256 allowed = av < 0 ? uint256(-av) : 0;
            if (added > allowed) {
                badDebtViolation = true;
                violation = "liquidation added bad debt beyond -AV";
            }
        } catch {}
    }

    function liquidateAll() public {
        address[] memory accts = new address[](_actors.length * 3);
        uint256[] memory mkts = new uint256[](_actors.length * 3);
        for (uint256 i; i < _actors.length; ++i) {
            for (uint256 m; m < 3; ++m) {
                accts[i * 3 + m] = _actors[i];
                mkts[i * 3 + m] = m;
            }
        }
        vm.prank(keeper);
        liquidations += ex.liquidateBatch(accts, mkts);
    }

    function toggleCertification(uint256 actorSeed) public {
        address a = _actor(actorSeed);
        bool c = ex.certified(a);
        vm.prank(riskAdmin);
        ex.setCertified(a, !c);
    }

    /// One pseudo-random action from a seed (the random-sequence fuzz test drives the handler with it).
    function step(uint256 seed) external {
        uint256 r = uint256(keccak256(abi.encode(seed, 1)));
        uint256 r2 = uint256(keccak256(abi.encode(seed, 2)));
        uint256 r3 = uint256(keccak256(abi.encode(seed, 3)));
        uint256 kind = seed % 20;
        if (kind < 1) deposit(r, r2);
        else if (kind < 8) trade(r, r2, r3, r3 % 3 == 0, r2 >> 8);
        else if (kind < 10) reduce(r, r2, r3);
        else if (kind < 14) movePrice(r, r2, r3 % 2 == 0);
        else if (kind < 16) liquidate(r, r2);
        else if (kind == 16) liquidateAll();
        else if (kind == 17) withdraw(r, r2);
        else if (kind == 18) warp(r);
        else settleFunding(r);
    }
}
