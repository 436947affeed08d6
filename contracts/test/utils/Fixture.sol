// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Test} from "./Test.sol";
import {Exchange} from "../../src/Exchange.sol";
import {OracleHub} from "../../src/OracleHub.sol";
import {LiquidityVault} from "../../src/LiquidityVault.sol";
import {InsuranceFund} from "../../src/InsuranceFund.sol";
import {MockUSDC} from "../../src/mocks/MockUSDC.sol";
import {MockAggregator} from "../../src/mocks/MockAggregator.sol";
import {IAggregatorV3} from "../../src/interfaces/IAggregatorV3.sol";

/// @notice Deploys the whole protocol the way a dev chain does: USDC, two 8-decimal feeds per market,
/// OracleHub, LiquidityVault, InsuranceFund, Exchange (with EXCHANGE_ROLE on vault and fund), markets
/// BTC/ETH/SOL at 2% mmr with generous caps, a seeded vault and fund. Roles are held by distinct
/// addresses so role separation can be tested: admin (this contract), riskAdmin, guardian.
abstract contract Fixture is Test {
    uint256 internal constant BTC = 0;
    uint256 internal constant ETH = 1;
    uint256 internal constant SOL = 2;
    uint256 internal constant N_MARKETS = 3;

    uint256 internal constant START = 1_700_000_000;
    uint64 internal constant HEARTBEAT = 3600;
    uint256 internal constant MMR_BPS = 200;
    uint256 internal constant OI_CAP = 10_000_000e6;

    int256 internal constant BTC_PRICE = 60_000e8;
    int256 internal constant ETH_PRICE = 2_000e8;
    int256 internal constant SOL_PRICE = 100e8;

    MockUSDC internal usdc;
    OracleHub internal oracle;
    LiquidityVault internal vault;
    InsuranceFund internal fund;
    Exchange internal ex;
    MockAggregator[N_MARKETS] internal primaryFeed;
    MockAggregator[N_MARKETS] internal secondaryFeed;

    address internal admin;
    address internal riskAdmin;
    address internal guardian;
    address internal lp;
    address internal donor;
    address internal keeper;

    /// Liquidity providers' seed; override for a small vault (ADL tests).
    function vaultSeed() internal pure virtual returns (uint256) {
        return 10_000_000e6;
    }

    /// The insurance fund's donation; override for a small fund (socialized-loss tests).
    function fundSeed() internal pure virtual returns (uint256) {
        return 100_000e6;
    }

    function setUp() public virtual {
        vm.warp(START);
        vm.roll(1_000);
        admin = address(this);
        riskAdmin = makeAddr("riskAdmin");
        guardian = makeAddr("guardian");
        lp = makeAddr("lp");
        donor = makeAddr("donor");
        keeper = makeAddr("keeper");

        usdc = new MockUSDC();
        oracle = new OracleHub(admin, guardian);
        vault = new LiquidityVault(usdc, admin);
        fund = new InsuranceFund(usdc, admin);
        ex = new Exchange(usdc, oracle, vault, fund, admin, riskAdmin);
        vault.grantRole(vault.EXCHANGE_ROLE(), address(ex));
        fund.grantRole(fund.EXCHANGE_ROLE(), address(ex));
        vm.label(address(ex), "Exchange");
        vm.label(address(vault), "Vault");
        vm.label(address(fund), "Fund");
        vm.label(address(oracle), "OracleHub");

        string[N_MARKETS] memory symbols = ["BTC", "ETH", "SOL"];
        int256[N_MARKETS] memory prices = [BTC_PRICE, ETH_PRICE, SOL_PRICE];
        for (uint256 m; m < N_MARKETS; ++m) {
            uint256 id = ex.listMarket(symbols[m], MMR_BPS, OI_CAP, OI_CAP);
            assertEq(id, m, "market id");
            primaryFeed[m] = new MockAggregator(8, string.concat(symbols[m], " / USD primary"), prices[m]);
            secondaryFeed[m] = new MockAggregator(8, string.concat(symbols[m], " / USD secondary"), prices[m]);
            oracle.setFeed(m, IAggregatorV3(address(primaryFeed[m])), IAggregatorV3(address(secondaryFeed[m])), HEARTBEAT);
            oracle.refresh(m);
        }

        mint(lp, vaultSeed());
        vm.startPrank(lp);
        usdc.approve(address(vault), type(uint256).max);
        vault.deposit(vaultSeed());
        vm.stopPrank();

        mint(donor, fundSeed());
        vm.startPrank(donor);
        usdc.approve(address(fund), type(uint256).max);
        fund.donate(fundSeed());
        vm.stopPrank();
    }

    // ------------------------------------------------------------------ money

    /// @notice Mints through the faucet (1M per call).
    function mint(address to, uint256 amount) internal {
        while (amount > 0) {
            uint256 chunk = amount < usdc.FAUCET_LIMIT() ? amount : usdc.FAUCET_LIMIT();
            usdc.faucet(to, chunk);
            amount -= chunk;
        }
    }

    /// @notice Mints `amount` (collateral units, 6 decimals) to `who` and deposits it to the exchange.
    function fundTrader(address who, uint256 amount) internal {
        mint(who, amount);
        vm.startPrank(who);
        usdc.approve(address(ex), type(uint256).max);
        ex.deposit(amount);
        vm.stopPrank();
    }

    // ------------------------------------------------------------------ users

    function educate(address who) internal {
        vm.prank(riskAdmin);
        ex.setEducation(who, true);
    }

    function certify(address who) internal {
        vm.prank(riskAdmin);
        ex.setCertified(who, true);
    }

    function uncertify(address who) internal {
        vm.prank(riskAdmin);
        ex.setCertified(who, false);
    }

    /// @notice An educated novice holding `amount` of collateral.
    function newNovice(string memory name, uint256 amount) internal returns (address who) {
        who = makeAddr(name);
        educate(who);
        if (amount > 0) fundTrader(who, amount);
    }

    /// @notice A certified (professional, 20x) trader holding `amount` of collateral.
    function newPro(string memory name, uint256 amount) internal returns (address who) {
        who = makeAddr(name);
        certify(who);
        if (amount > 0) fundTrader(who, amount);
    }

    // ------------------------------------------------------------------ prices

    /// @notice Sets BOTH feeds of a market to `price8` (8 decimals) at the current time and refreshes
    /// the hub, so the mark is exactly `price8 * 1e10`.
    function setPrice(uint256 m, int256 price8) internal {
        primaryFeed[m].setAnswer(price8);
        secondaryFeed[m].setAnswer(price8);
        oracle.refresh(m);
    }

    /// @notice Like setPrice, after letting the breaker window pass (so the move cannot trip it);
    /// every other feed is re-posted so nothing goes stale.
    function setPriceCalm(uint256 m, int256 price8) internal {
        skip(oracle.breakerWindow() + 1);
        refreshFeeds();
        setPrice(m, price8);
    }

    /// @notice Re-posts every feed's current answer at the current time (keeps feeds fresh after warps).
    function refreshFeeds() internal {
        for (uint256 m; m < N_MARKETS; ++m) {
            primaryFeed[m].setAnswer(primaryFeed[m].answer());
            secondaryFeed[m].setAnswer(secondaryFeed[m].answer());
            oracle.refresh(m);
        }
    }

    function skip(uint256 dt) internal {
        vm.warp(block.timestamp + dt);
    }

    function mark(uint256 m) internal view returns (uint256) {
        return oracle.markPrice(m);
    }

    // ------------------------------------------------------------------ trading

    function openPosition(address who, uint256 m, int256 sizeDelta, uint256 leverage) internal {
        vm.prank(who);
        ex.trade(m, sizeDelta, leverage, 0);
    }

    function closePosition(address who, uint256 m) internal {
        int256 s = ex.positionOf(who, m).size;
        vm.prank(who);
        ex.trade(m, -s, 1, 0);
    }

    function sizeOf(address who, uint256 m) internal view returns (int256) {
        return ex.positionOf(who, m).size;
    }

    /// @notice `n` completed trades on SOL (0.1 SOL in and out, a flip for odd counts), to climb tiers;
    /// leaves the SOL position flat (except n == 1).
    function churn(address who, uint256 n) internal {
        if (n % 2 == 1 && n >= 3) {
            openPosition(who, SOL, 0.1e18, 1);
            openPosition(who, SOL, -0.2e18, 1);
            openPosition(who, SOL, 0.1e18, 1);
            n -= 3;
        }
        for (; n >= 2; n -= 2) {
            openPosition(who, SOL, 0.1e18, 1);
            openPosition(who, SOL, -0.1e18, 1);
        }
        if (n == 1) openPosition(who, SOL, 0.1e18, 1);
    }

    // ------------------------------------------------------------------ accounting

    /// @notice Σ max(collateralOf, 0): what the exchange must hold for these accounts.
    function heldFor(address[] memory accounts) internal view returns (uint256 total) {
        for (uint256 i; i < accounts.length; ++i) {
            int256 c = ex.collateralOf(accounts[i]);
            if (c > 0) total += uint256(c);
        }
    }

    function bal(address who) internal view returns (uint256) {
        return usdc.balanceOf(who);
    }

    /// @notice The exchange's RiskParams as a struct (the public getter returns 12 words: a static
    /// struct has the same encoding, and decoding it avoids a 12-variable destructuring).
    function riskParams() internal view returns (Exchange.RiskParams memory p) {
        (bool ok, bytes memory data) = address(ex).staticcall(abi.encodeWithSignature("params()"));
        require(ok, "params()");
        p = abi.decode(data, (Exchange.RiskParams));
    }
}
