// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {InsuranceFund} from "./InsuranceFund.sol";
import {LiquidityVault} from "./LiquidityVault.sol";
import {OracleHub} from "./OracleHub.sol";
import {RiskMath} from "./RiskMath.sol";

/// @title Exchange
/// @notice Zanbara's perpetual exchange: cross-margined accounts trading against the liquidity vault at
/// the oracle mark price, guarded by three risk layers (user, system, market). Liquidation, funding
/// settlement and auto-deleveraging are permissionless so that any keeper can keep the book safe.
/// Every state change emits an event carrying the resulting state, so the book can be rebuilt from
/// events alone.
contract Exchange is AccessControl, ReentrancyGuard {
    using SafeERC20 for IERC20;

    bytes32 public constant RISK_ADMIN_ROLE = keccak256("RISK_ADMIN_ROLE");

    // ------------------------------------------------------------------ types

    enum Tier {
        Novice,
        Junior,
        Senior,
        Professional
    }

    enum ChangeReason {
        Trade,
        Liquidation,
        Deleverage
    }

    struct Position {
        int256 size;
        uint256 entryPrice;
        int256 entryFundingIndex;
    }

    struct MarketConfig {
        string symbol;
        uint256 mmrBps;
        uint256 longOiCap;
        uint256 shortOiCap;
        bool listed;
    }

    struct MarketState {
        uint256 longSize;
        uint256 shortSize;
        /// Σ size·entryPrice of longs / shorts (1e36): aggregate PnL without iterating positions.
        uint256 longCost;
        uint256 shortCost;
        int256 fundingIndex;
        uint256 lastFundingPeriod;
        int256 lastFundingRate;
        bool adlActive;
    }

    struct TierLimits {
        uint256 maxLeverage;
        uint256 maxOrderNotional;
    }

    struct RiskParams {
        uint256 tradingFeeBps;
        uint256 fundFeeBps;
        uint256 liquidationBps;
        uint256 targetBps;
        uint256 penaltyBps;
        uint256 minRemainingNotional;
        uint256 adlTriggerBps;
        uint256 adlTargetBps;
        uint256 maxFundingRateWad;
        uint256 fundingPeriod;
        uint256 accountNotionalCap;
        uint256 globalOiCap;
    }

    /// The resulting state of a position change (trade, liquidation or deleverage).
    struct PositionChange {
        ChangeReason reason;
        int256 sizeDelta;
        uint256 price;
        int256 sizeAfter;
        uint256 entryPriceAfter;
        int256 entryFundingIndexAfter;
        int256 realizedPnl;
        int256 fundingPaid;
        uint256 fee;
        int256 collateralAfter;
    }

    struct Liquidation {
        address liquidator;
        int256 sizeClosed;
        uint256 price;
        uint256 penalty;
        uint256 keeperReward;
        uint256 fundShare;
        bool full;
        int256 accountValueBefore;
        uint256 maintenanceMarginBefore;
        int256 collateralAfter;
    }

    struct AccountSummary {
        int256 collateral;
        int256 value;
        uint256 maintenanceMargin;
        uint256 notional;
        uint256 marginRatioBps;
        Tier tier;
        uint256 trades;
        bool liquidatable;
    }

    struct AccountSnapshot {
        bool ok;
        uint256 badMarket;
        int256 value;
        uint256 maintenanceMargin;
        uint256 notional;
    }

    // ------------------------------------------------------------------ state

    IERC20 public immutable collateralToken;
    OracleHub public immutable oracle;
    LiquidityVault public immutable vault;
    InsuranceFund public immutable fund;

    RiskParams public params;
    TierLimits[4] internal _tierLimits;
    uint256 public constant EDUCATION_TRADES = 0;
    uint256 public juniorTrades = 5;
    uint256 public seniorTrades = 20;

    uint256 public marketCount;
    mapping(uint256 => MarketConfig) internal _markets;
    mapping(uint256 => MarketState) public marketState;

    mapping(address => int256) public collateralOf;
    mapping(address => mapping(uint256 => Position)) internal _positions;
    /// Bit m set: the account holds a position in market m.
    mapping(address => uint256) public openMarketsMask;
    mapping(address => uint256) public tradeCount;
    mapping(address => bool) public certified;
    mapping(address => bool) public educated;

    uint256 public totalBadDebt;
    uint256 public totalSocializedLoss;

    // ------------------------------------------------------------------ events

    event MarketListed(uint256 indexed marketId, string symbol, uint256 mmrBps, uint256 longOiCap, uint256 shortOiCap);
    event MarketCapsSet(uint256 indexed marketId, uint256 longOiCap, uint256 shortOiCap);
    event RiskParamsSet(RiskParams params);
    event TierLimitsSet(Tier indexed tier, uint256 maxLeverage, uint256 maxOrderNotional);
    event Deposited(address indexed account, address indexed from, uint256 amount, int256 collateralAfter);
    event Withdrawn(address indexed account, uint256 amount, int256 collateralAfter);
    event PositionChanged(address indexed account, uint256 indexed marketId, PositionChange change);
    event Liquidated(address indexed account, uint256 indexed marketId, Liquidation liquidation);
    event BadDebtSettled(address indexed account, uint256 debt, uint256 paidByFund, uint256 socialized);
    event FundingSettled(
        uint256 indexed marketId,
        uint256 indexed period,
        int256 rateWad,
        uint256 markPrice,
        int256 indexAfter,
        uint256 longSize,
        uint256 shortSize
    );
    event AutoDeleveraged(
        address indexed account,
        uint256 indexed marketId,
        int256 sizeClosed,
        uint256 price,
        int256 realizedPnl,
        uint256 rankScore,
        int256 marketTraderPnlAfter,
        uint256 vaultAssetsAfter
    );
    event AdlStateChanged(uint256 indexed marketId, bool active, int256 traderPnl, uint256 vaultAssets);
    event TierChanged(address indexed account, Tier oldTier, Tier newTier, uint256 trades);
    event EducationSet(address indexed account, bool done);
    event CertificationSet(address indexed account, bool certified);

    // ------------------------------------------------------------------ errors
    // Each rejection names its rule and carries the limit and the value tried: "why was my order
    // rejected?" is answered from the error alone.

    // user layer
    error EducationRequired(address account);
    error LeverageTooHigh(Tier tier, uint256 maxLeverage, uint256 requested);
    error OrderTooLarge(Tier tier, uint256 maxOrderNotional, uint256 orderNotional);
    error PositionCapExceeded(uint256 cap, uint256 totalNotional);
    error InsufficientMargin(uint256 required, int256 available);
    error WithdrawalBelowInitialMargin(uint256 required, int256 valueAfter);
    error InsufficientCollateral(int256 available, uint256 requested);
    // system layer
    error OpenInterestCapExceeded(uint256 marketId, bool isLong, uint256 cap, uint256 openInterest);
    error GlobalOpenInterestCapExceeded(uint256 cap, uint256 openInterest);
    // market layer
    error MarketReduceOnly(uint256 marketId);
    error MarketPaused(uint256 marketId);
    error OracleUnavailable(uint256 marketId);
    error FundingNotDue(uint256 marketId, uint256 nextPeriodStart);
    error NotLiquidatable(address account, uint256 marginRatioBps);
    error AdlNotTriggered(uint256 marketId, int256 traderPnl, uint256 vaultAssets);
    error AdlPositionNotProfitable(address account, uint256 marketId);
    error PriceSlippage(uint256 markPrice, uint256 acceptablePrice);
    // input
    error UnknownMarket(uint256 marketId);
    error ZeroAmount();
    error InvalidLeverage(uint256 leverage);
    error LengthMismatch();
    error BadParameter();

    constructor(
        IERC20 collateral_,
        OracleHub oracle_,
        LiquidityVault vault_,
        InsuranceFund fund_,
        address admin,
        address riskAdmin
    ) {
        collateralToken = collateral_;
        oracle = oracle_;
        vault = vault_;
        fund = fund_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(RISK_ADMIN_ROLE, riskAdmin);
        params = RiskParams({
            tradingFeeBps: 6,
            fundFeeBps: 2,
            liquidationBps: 11_000,
            targetBps: 15_000,
            penaltyBps: 100,
            minRemainingNotional: 100e6,
            adlTriggerBps: 4_500,
            adlTargetBps: 4_000,
            maxFundingRateWad: 1e14,
            fundingPeriod: 3_600,
            accountNotionalCap: 100_000e6,
            globalOiCap: 50_000_000e6
        });
        _tierLimits[uint256(Tier.Novice)] = TierLimits(3, 5_000e6);
        _tierLimits[uint256(Tier.Junior)] = TierLimits(5, 20_000e6);
        _tierLimits[uint256(Tier.Senior)] = TierLimits(10, 50_000e6);
        _tierLimits[uint256(Tier.Professional)] = TierLimits(20, 50_000e6);
    }

    // ================================================================== admin

    function listMarket(string calldata symbol, uint256 mmrBps, uint256 longOiCap, uint256 shortOiCap)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
        returns (uint256 marketId)
    {
        if (mmrBps == 0 || mmrBps >= RiskMath.BPS || marketCount >= 256) revert BadParameter();
        marketId = marketCount++;
        _markets[marketId] = MarketConfig(symbol, mmrBps, longOiCap, shortOiCap, true);
        marketState[marketId].lastFundingPeriod = block.timestamp / params.fundingPeriod;
        emit MarketListed(marketId, symbol, mmrBps, longOiCap, shortOiCap);
    }

    function setMarketCaps(uint256 marketId, uint256 longOiCap, uint256 shortOiCap)
        external
        onlyRole(RISK_ADMIN_ROLE)
    {
        MarketConfig storage mk = _market(marketId);
        mk.longOiCap = longOiCap;
        mk.shortOiCap = shortOiCap;
        emit MarketCapsSet(marketId, longOiCap, shortOiCap);
    }

    function setRiskParams(RiskParams calldata p) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (
            p.fundFeeBps > p.tradingFeeBps || p.liquidationBps < RiskMath.BPS || p.targetBps <= p.liquidationBps
                || p.adlTargetBps >= p.adlTriggerBps || p.fundingPeriod == 0
        ) revert BadParameter();
        params = p;
        emit RiskParamsSet(p);
    }

    function setTierLimits(Tier tier, uint256 maxLeverage, uint256 maxOrderNotional)
        external
        onlyRole(RISK_ADMIN_ROLE)
    {
        if (maxLeverage == 0) revert BadParameter();
        _tierLimits[uint256(tier)] = TierLimits(maxLeverage, maxOrderNotional);
        emit TierLimitsSet(tier, maxLeverage, maxOrderNotional);
    }

    function setEducation(address account, bool done) external onlyRole(RISK_ADMIN_ROLE) {
        educated[account] = done;
        emit EducationSet(account, done);
    }

    function setCertified(address account, bool yes) external onlyRole(RISK_ADMIN_ROLE) {
        Tier before = tierOf(account);
        certified[account] = yes;
        emit CertificationSet(account, yes);
        Tier afterTier = tierOf(account);
        if (afterTier != before) emit TierChanged(account, before, afterTier, tradeCount[account]);
    }

    // ================================================================== collateral

    function deposit(uint256 amount) external {
        depositFor(msg.sender, amount);
    }

    /// @notice Credits `account` with `amount` taken from the caller; repays the account's debt first.
    function depositFor(address account, uint256 amount) public nonReentrant {
        if (amount == 0) revert ZeroAmount();
        collateralToken.safeTransferFrom(msg.sender, address(this), amount);
        int256 c0 = collateralOf[account];
        int256 c1 = c0 + int256(amount);
        collateralOf[account] = c1;
        _settleTokens(c0, c1, 0, amount);
        emit Deposited(account, msg.sender, amount, c1);
    }

    /// @notice Withdraws collateral while the account stays at or above its initial margin.
    function withdraw(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        int256 c0 = collateralOf[msg.sender];
        if (c0 < int256(amount)) revert InsufficientCollateral(c0, amount);
        int256 c1 = c0 - int256(amount);
        collateralOf[msg.sender] = c1;
        if (openMarketsMask[msg.sender] != 0) {
            AccountSnapshot memory s = _snapshotOrRevert(msg.sender);
            uint256 required = RiskMath.ceilDivU(s.notional, _tierLimits[uint256(tierOf(msg.sender))].maxLeverage);
            if (s.value < int256(required)) revert WithdrawalBelowInitialMargin(required, s.value);
        }
        collateralToken.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount, c1);
    }

    // ================================================================== trading

    /// @notice Opens, increases, reduces, closes or flips the caller's position in `marketId` by
    /// `sizeDelta` at the mark price plus the trading fee. `leverage` is the account leverage the
    /// trader accepts (1..tier max); `acceptablePrice` (0: none) bounds the fill.
    function trade(uint256 marketId, int256 sizeDelta, uint256 leverage, uint256 acceptablePrice)
        external
        nonReentrant
    {
        if (sizeDelta == 0) revert ZeroAmount();
        _market(marketId);
        (bool ok, uint256 mark, OracleHub.Status st) = oracle.refresh(marketId);
        if (!ok) revert MarketPaused(marketId);
        if (acceptablePrice != 0 && (sizeDelta > 0 ? mark > acceptablePrice : mark < acceptablePrice)) {
            revert PriceSlippage(mark, acceptablePrice);
        }
        int256 oldSize = _positions[msg.sender][marketId].size;
        bool increasing = oldSize == 0 || (oldSize > 0) == (sizeDelta > 0)
            || RiskMath.abs(sizeDelta) > RiskMath.abs(oldSize);
        Tier tier = tierOf(msg.sender);
        if (increasing) {
            if (st == OracleHub.Status.ReduceOnly) revert MarketReduceOnly(marketId);
            _checkOrder(msg.sender, tier, sizeDelta, leverage, mark);
        }
        _executeTrade(msg.sender, marketId, sizeDelta, mark);
        if (increasing) {
            _checkSystemLayer(marketId, mark, sizeDelta > 0);
            _checkAccount(msg.sender, leverage);
        }
        uint256 trades = ++tradeCount[msg.sender];
        Tier newTier = tierOf(msg.sender);
        if (newTier != tier) emit TierChanged(msg.sender, tier, newTier, trades);
        _settleBadDebtIfFlat(msg.sender);
    }

    /// @dev Fills at mark: the trading fee's fund share goes to the insurance fund, the rest to the vault.
    function _executeTrade(address a, uint256 m, int256 sizeDelta, uint256 mark) internal {
        uint256 feeAmt = RiskMath.fee(sizeDelta, mark, params.tradingFeeBps);
        uint256 fundFee = RiskMath.fee(sizeDelta, mark, params.fundFeeBps);
        int256 c0 = collateralOf[a];
        PositionChange memory ch = _modify(a, m, sizeDelta, mark, feeAmt, ChangeReason.Trade);
        _settleTokens(c0, ch.collateralAfter, fundFee, 0);
        if (fundFee > 0) {
            collateralToken.safeTransfer(address(fund), fundFee);
            fund.recordIncome(InsuranceFund.IncomeKind.TradingFee, a, fundFee);
        }
    }

    // ================================================================== liquidation

    /// @notice Liquidates `account` in `marketId`; reverts when it is not liquidatable.
    function liquidate(address account, uint256 marketId) external nonReentrant {
        if (!_liquidate(account, marketId, msg.sender)) {
            AccountSnapshot memory s = _snapshot(account);
            revert NotLiquidatable(account, RiskMath.marginRatioBps(s.value, s.maintenanceMargin));
        }
    }

    /// @notice Liquidates many accounts in one transaction, skipping (not reverting on) any that is no
    /// longer liquidatable, so racing keepers do not waste each other's gas. Returns how many it did.
    function liquidateBatch(address[] calldata accounts, uint256[] calldata marketIds)
        external
        nonReentrant
        returns (uint256 count)
    {
        if (accounts.length != marketIds.length) revert LengthMismatch();
        for (uint256 i; i < accounts.length; ++i) {
            if (_liquidate(accounts[i], marketIds[i], msg.sender)) ++count;
        }
    }

    function _liquidate(address a, uint256 m, address liquidator) internal returns (bool) {
        if (!_markets[m].listed || _positions[a][m].size == 0) return false;
        (bool ok, uint256 mark,) = oracle.refresh(m);
        if (!ok) return false;
        AccountSnapshot memory s = _snapshot(a);
        if (!s.ok || !RiskMath.isBelow(s.value, s.maintenanceMargin, params.liquidationBps)) return false;

        Liquidation memory liq = _planLiquidation(a, m, mark, s);
        liq.liquidator = liquidator;
        int256 c0 = collateralOf[a];
        PositionChange memory ch = _modify(a, m, liq.sizeClosed, mark, 0, ChangeReason.Liquidation);
        liq.penalty = RiskMath.liquidationPenalty(
            RiskMath.abs(liq.sizeClosed), mark, params.penaltyBps, s.value, ch.collateralAfter
        );
        liq.keeperReward = liq.penalty / 2;
        liq.fundShare = liq.penalty - liq.keeperReward;
        liq.collateralAfter = ch.collateralAfter - int256(liq.penalty);
        collateralOf[a] = liq.collateralAfter;

        _settleTokens(c0, liq.collateralAfter, liq.penalty, 0);
        if (liq.keeperReward > 0) collateralToken.safeTransfer(liquidator, liq.keeperReward);
        if (liq.fundShare > 0) {
            collateralToken.safeTransfer(address(fund), liq.fundShare);
            fund.recordIncome(InsuranceFund.IncomeKind.LiquidationPenalty, a, liq.fundShare);
        }
        emit Liquidated(a, m, liq);
        _settleBadDebtIfFlat(a);
        return true;
    }

    function _planLiquidation(address a, uint256 m, uint256 mark, AccountSnapshot memory s)
        internal
        view
        returns (Liquidation memory liq)
    {
        int256 size = _positions[a][m].size;
        (uint256 closeAbs, bool full) = RiskMath.liquidationCloseSize(
            size,
            mark,
            s.value,
            s.maintenanceMargin,
            _markets[m].mmrBps,
            params.targetBps,
            params.penaltyBps,
            params.minRemainingNotional
        );
        liq.sizeClosed = size > 0 ? -int256(closeAbs) : int256(closeAbs);
        liq.price = mark;
        liq.full = full;
        liq.accountValueBefore = s.value;
        liq.maintenanceMarginBefore = s.maintenanceMargin;
    }

    // ================================================================== funding

    /// @notice Settles funding for every whole period since the last one; anyone may call, at most once
    /// a period. Rate = maxRate · skew, skew = (L − S) / (L + S); the heavier side pays.
    function settleFunding(uint256 marketId) external nonReentrant {
        _market(marketId);
        MarketState storage ms = marketState[marketId];
        uint256 period = block.timestamp / params.fundingPeriod;
        if (period <= ms.lastFundingPeriod) {
            revert FundingNotDue(marketId, (ms.lastFundingPeriod + 1) * params.fundingPeriod);
        }
        (bool ok, uint256 mark,) = oracle.refresh(marketId);
        if (!ok) revert MarketPaused(marketId);
        int256 rate = RiskMath.fundingRate(ms.longSize, ms.shortSize, params.maxFundingRateWad);
        ms.fundingIndex += RiskMath.fundingIndexDelta(rate, mark, period - ms.lastFundingPeriod);
        ms.lastFundingPeriod = period;
        ms.lastFundingRate = rate;
        emit FundingSettled(marketId, period, rate, mark, ms.fundingIndex, ms.longSize, ms.shortSize);
    }

    // ================================================================== auto-deleveraging

    /// @notice Reduces a profitable position at mark, without fee, while traders' unrealized profit in the
    /// market exceeds the trigger share of the vault's assets (and until it is back under the target).
    /// The contract checks the trigger and profitability; keepers pick positions by `adlScore` rank,
    /// published in the event so the order can be audited.
    function autoDeleverage(uint256 marketId, address account, uint256 sizeAbs) external nonReentrant {
        _market(marketId);
        (bool ok, uint256 mark,) = oracle.refresh(marketId);
        if (!ok) revert MarketPaused(marketId);
        (int256 traderPnl, uint256 assets) = _adlState(marketId, mark);
        if (!_adlAllowed(marketId, traderPnl, assets)) revert AdlNotTriggered(marketId, traderPnl, assets);
        Position storage p = _positions[account][marketId];
        if (p.size == 0 || RiskMath.pnl(p.size, p.entryPrice, mark) <= 0) {
            revert AdlPositionNotProfitable(account, marketId);
        }
        uint256 score = RiskMath.adlScore(p.size, p.entryPrice, mark, _snapshotOrRevert(account).value);
        uint256 closeAbs = sizeAbs < RiskMath.abs(p.size) ? sizeAbs : RiskMath.abs(p.size);
        if (closeAbs == 0) revert ZeroAmount();
        int256 delta = p.size > 0 ? -int256(closeAbs) : int256(closeAbs);
        int256 c0 = collateralOf[account];
        PositionChange memory ch = _modify(account, marketId, delta, mark, 0, ChangeReason.Deleverage);
        _settleTokens(c0, ch.collateralAfter, 0, 0);
        _settleBadDebtIfFlat(account);
        (traderPnl, assets) = _adlState(marketId, mark);
        _setAdlActive(marketId, traderPnl, assets);
        emit AutoDeleveraged(account, marketId, delta, mark, ch.realizedPnl, score, traderPnl, assets);
    }

    /// @dev Hysteresis: ADL starts above the trigger share and goes on until it is back under the target.
    function _adlAllowed(uint256 m, int256 traderPnl, uint256 assets) internal view returns (bool) {
        if (traderPnl <= 0) return false;
        uint256 share = uint256(traderPnl) * RiskMath.BPS;
        if (share > params.adlTriggerBps * assets) return true;
        return marketState[m].adlActive && share > params.adlTargetBps * assets;
    }

    function _setAdlActive(uint256 m, int256 traderPnl, uint256 assets) internal {
        bool active = traderPnl > 0 && uint256(traderPnl) * RiskMath.BPS > params.adlTargetBps * assets;
        if (active != marketState[m].adlActive) {
            marketState[m].adlActive = active;
            emit AdlStateChanged(m, active, traderPnl, assets);
        }
    }

    // ================================================================== views

    function tierOf(address account) public view returns (Tier) {
        if (certified[account]) return Tier.Professional;
        uint256 n = tradeCount[account];
        if (n >= seniorTrades) return Tier.Senior;
        if (n >= juniorTrades) return Tier.Junior;
        return Tier.Novice;
    }

    function tierLimits(Tier tier) external view returns (uint256 maxLeverage, uint256 maxOrderNotional) {
        TierLimits storage t = _tierLimits[uint256(tier)];
        return (t.maxLeverage, t.maxOrderNotional);
    }

    function market(uint256 marketId) external view returns (MarketConfig memory) {
        return _markets[marketId];
    }

    function positionOf(address account, uint256 marketId) external view returns (Position memory) {
        return _positions[account][marketId];
    }

    /// @notice AV = collateral + Σ unrealized PnL at mark − pending funding.
    function accountValue(address account) external view returns (int256) {
        return _snapshotOrRevert(account).value;
    }

    function maintenanceMargin(address account) external view returns (uint256) {
        return _snapshotOrRevert(account).maintenanceMargin;
    }

    /// @notice AV / MM in bps (rounded down); type(uint256).max when flat.
    function marginRatioBps(address account) external view returns (uint256) {
        AccountSnapshot memory s = _snapshotOrRevert(account);
        return RiskMath.marginRatioBps(s.value, s.maintenanceMargin);
    }

    function isLiquidatable(address account) public view returns (bool) {
        AccountSnapshot memory s = _snapshot(account);
        return s.ok && RiskMath.isBelow(s.value, s.maintenanceMargin, params.liquidationBps);
    }

    /// @notice Everything a page or keeper shows about one account, in one call.
    function accountSummary(address account) external view returns (AccountSummary memory r) {
        AccountSnapshot memory s = _snapshotOrRevert(account);
        r.collateral = collateralOf[account];
        r.value = s.value;
        r.maintenanceMargin = s.maintenanceMargin;
        r.notional = s.notional;
        r.marginRatioBps = RiskMath.marginRatioBps(s.value, s.maintenanceMargin);
        r.tier = tierOf(account);
        r.trades = tradeCount[account];
        r.liquidatable = RiskMath.isBelow(s.value, s.maintenanceMargin, params.liquidationBps);
    }

    /// @notice The `marketId` price at which the account reaches `thresholdBps` (the liquidation line
    /// when 0 is passed), other markets held at their marks; 0 when none.
    function liquidationPrice(address account, uint256 marketId, uint256 thresholdBps)
        external
        view
        returns (uint256)
    {
        Position memory p = _positions[account][marketId];
        if (p.size == 0) return 0;
        AccountSnapshot memory s = _snapshotOrRevert(account);
        uint256 mark = oracle.markPrice(marketId);
        int256 restValue = s.value - RiskMath.pnl(p.size, p.entryPrice, mark);
        uint256 restMm = s.maintenanceMargin - RiskMath.maintenanceMargin(p.size, mark, _markets[marketId].mmrBps);
        return RiskMath.liquidationPrice(
            p.size,
            p.entryPrice,
            restValue,
            restMm,
            _markets[marketId].mmrBps,
            thresholdBps == 0 ? params.liquidationBps : thresholdBps
        );
    }

    /// @notice What a liquidation in `marketId` would close now: (0, false) when not liquidatable.
    function liquidatableSize(address account, uint256 marketId) external view returns (uint256 size, bool full) {
        Position memory p = _positions[account][marketId];
        if (p.size == 0) return (0, false);
        AccountSnapshot memory s = _snapshot(account);
        if (!s.ok || !RiskMath.isBelow(s.value, s.maintenanceMargin, params.liquidationBps)) return (0, false);
        return RiskMath.liquidationCloseSize(
            p.size,
            oracle.markPrice(marketId),
            s.value,
            s.maintenanceMargin,
            _markets[marketId].mmrBps,
            params.targetBps,
            params.penaltyBps,
            params.minRemainingNotional
        );
    }

    /// @notice Open interest of a market: sizes and notional at mark (0 notional when the oracle is down).
    function openInterest(uint256 marketId)
        external
        view
        returns (uint256 longSize, uint256 shortSize, uint256 longNotional, uint256 shortNotional)
    {
        MarketState storage ms = marketState[marketId];
        (bool ok, uint256 mark) = oracle.tryMarkPrice(marketId);
        longSize = ms.longSize;
        shortSize = ms.shortSize;
        if (ok) {
            longNotional = (longSize * mark) / RiskMath.USD_SCALE;
            shortNotional = (shortSize * mark) / RiskMath.USD_SCALE;
        }
    }

    /// @notice Global open interest at entry value (Σ size·entry over all markets), the unit of the global cap.
    function globalOpenInterest() public view returns (uint256 total) {
        for (uint256 m; m < marketCount; ++m) {
            MarketState storage ms = marketState[m];
            total += (ms.longCost + ms.shortCost) / RiskMath.USD_SCALE;
        }
    }

    /// @notice Traders' net unrealized PnL in a market (the vault's liability) and the vault's assets.
    function adlState(uint256 marketId) external view returns (int256 traderPnl, uint256 vaultAssets, bool active) {
        (traderPnl, vaultAssets) = _adlState(marketId, oracle.markPrice(marketId));
        active = marketState[marketId].adlActive;
    }

    /// @notice The rate the next settlement would apply and when it becomes due.
    function nextFunding(uint256 marketId) external view returns (int256 rateWad, uint256 dueAt) {
        MarketState storage ms = marketState[marketId];
        rateWad = RiskMath.fundingRate(ms.longSize, ms.shortSize, params.maxFundingRateWad);
        dueAt = (ms.lastFundingPeriod + 1) * params.fundingPeriod;
    }

    // ================================================================== internals

    function _market(uint256 marketId) internal view returns (MarketConfig storage mk) {
        mk = _markets[marketId];
        if (!mk.listed) revert UnknownMarket(marketId);
    }

    /// @dev User-layer checks of a risk-increasing order, before it executes.
    function _checkOrder(address a, Tier tier, int256 sizeDelta, uint256 leverage, uint256 mark) internal view {
        if (tier == Tier.Novice && !educated[a]) revert EducationRequired(a);
        TierLimits storage lim = _tierLimits[uint256(tier)];
        if (leverage == 0) revert InvalidLeverage(leverage);
        if (leverage > lim.maxLeverage) revert LeverageTooHigh(tier, lim.maxLeverage, leverage);
        uint256 orderNotional = RiskMath.notional(sizeDelta, mark);
        if (orderNotional > lim.maxOrderNotional) revert OrderTooLarge(tier, lim.maxOrderNotional, orderNotional);
    }

    /// @dev System-layer caps after a risk-increasing order: the cap of the side the order adds to
    /// (caps are per side), then the global cap.
    function _checkSystemLayer(uint256 m, uint256 mark, bool isLong) internal view {
        MarketState storage ms = marketState[m];
        MarketConfig storage mk = _markets[m];
        if (isLong) {
            uint256 longOi = (ms.longSize * mark) / RiskMath.USD_SCALE;
            if (longOi > mk.longOiCap) revert OpenInterestCapExceeded(m, true, mk.longOiCap, longOi);
        } else {
            uint256 shortOi = (ms.shortSize * mark) / RiskMath.USD_SCALE;
            if (shortOi > mk.shortOiCap) revert OpenInterestCapExceeded(m, false, mk.shortOiCap, shortOi);
        }
        uint256 global = globalOpenInterest();
        if (global > params.globalOiCap) revert GlobalOpenInterestCapExceeded(params.globalOiCap, global);
    }

    /// @dev Account caps and initial margin after a risk-increasing order.
    function _checkAccount(address a, uint256 leverage) internal view {
        AccountSnapshot memory s = _snapshotOrRevert(a);
        if (s.notional > params.accountNotionalCap) revert PositionCapExceeded(params.accountNotionalCap, s.notional);
        uint256 required = RiskMath.ceilDivU(s.notional, leverage);
        if (s.value < int256(required)) revert InsufficientMargin(required, s.value);
    }

    /// @dev Applies a position change at `mark`: settles the position's funding, realizes PnL on the
    /// reduced part, charges `feeAmt`, updates entry, open interest and the account's market mask.
    function _modify(address a, uint256 m, int256 delta, uint256 mark, uint256 feeAmt, ChangeReason reason)
        internal
        returns (PositionChange memory ch)
    {
        ch.reason = reason;
        ch.sizeDelta = delta;
        ch.price = mark;
        ch.fee = feeAmt;
        Position storage p = _positions[a][m];
        MarketState storage ms = marketState[m];
        int256 oldSize = p.size;
        if (oldSize != 0) ch.fundingPaid = RiskMath.fundingOwed(oldSize, p.entryFundingIndex, ms.fundingIndex);
        _aggregate(ms, oldSize, p.entryPrice, false);
        ch.sizeAfter = oldSize + delta;
        if (oldSize == 0) {
            ch.entryPriceAfter = mark;
        } else if ((oldSize > 0) == (delta > 0)) {
            ch.entryPriceAfter = _weightedEntry(oldSize, p.entryPrice, delta, mark);
        } else {
            ch.realizedPnl = _realizedPnl(oldSize, delta, p.entryPrice, mark);
            if (ch.sizeAfter == 0) ch.entryPriceAfter = 0;
            else if ((ch.sizeAfter > 0) == (oldSize > 0)) ch.entryPriceAfter = p.entryPrice;
            else ch.entryPriceAfter = mark;
        }
        p.size = ch.sizeAfter;
        p.entryPrice = ch.entryPriceAfter;
        p.entryFundingIndex = ms.fundingIndex;
        ch.entryFundingIndexAfter = ms.fundingIndex;
        _aggregate(ms, ch.sizeAfter, ch.entryPriceAfter, true);
        if (ch.sizeAfter == 0) openMarketsMask[a] &= ~(uint256(1) << m);
        else openMarketsMask[a] |= uint256(1) << m;
        ch.collateralAfter = collateralOf[a] + ch.realizedPnl - ch.fundingPaid - int256(ch.fee);
        collateralOf[a] = ch.collateralAfter;
        emit PositionChanged(a, m, ch);
    }

    /// @dev PnL realized when `delta` reduces (or flips) `oldSize`: on the closed part only.
    function _realizedPnl(int256 oldSize, int256 delta, uint256 entry, uint256 mark) internal pure returns (int256) {
        uint256 closing = RiskMath.abs(delta) < RiskMath.abs(oldSize) ? RiskMath.abs(delta) : RiskMath.abs(oldSize);
        return RiskMath.pnl(oldSize > 0 ? int256(closing) : -int256(closing), entry, mark);
    }

    /// @dev Average entry, rounded against the trader (up for longs, down for shorts).
    function _weightedEntry(int256 oldSize, uint256 oldEntry, int256 delta, uint256 mark)
        internal
        pure
        returns (uint256)
    {
        uint256 o = RiskMath.abs(oldSize);
        uint256 d = RiskMath.abs(delta);
        uint256 num = o * oldEntry + d * mark;
        return oldSize > 0 ? RiskMath.ceilDivU(num, o + d) : num / (o + d);
    }

    function _aggregate(MarketState storage ms, int256 size, uint256 entry, bool add) internal {
        if (size == 0) return;
        uint256 s = RiskMath.abs(size);
        if (size > 0) {
            ms.longSize = add ? ms.longSize + s : ms.longSize - s;
            ms.longCost = add ? ms.longCost + s * entry : ms.longCost - s * entry;
        } else {
            ms.shortSize = add ? ms.shortSize + s : ms.shortSize - s;
            ms.shortCost = add ? ms.shortCost + s * entry : ms.shortCost - s * entry;
        }
    }

    /// @dev The exchange holds exactly Σ max(collateral, 0) of the token: moves the difference a change
    /// of one account's collateral from c0 to c1 implies, net of what the caller pays out (`outflows`,
    /// to the fund or a keeper) and what it took in (`inflows`), to or from the vault.
    function _settleTokens(int256 c0, int256 c1, uint256 outflows, uint256 inflows) internal {
        int256 held0 = c0 > 0 ? c0 : int256(0);
        int256 held1 = c1 > 0 ? c1 : int256(0);
        int256 fromVault = held1 - held0 + int256(outflows) - int256(inflows);
        if (fromVault > 0) vault.pay(address(this), uint256(fromVault));
        else if (fromVault < 0) collateralToken.safeTransfer(address(vault), uint256(-fromVault));
    }

    /// @dev Waterfall step 2 and 3: a flat account's negative collateral is bad debt owed to the vault,
    /// paid by the insurance fund as far as it can, the rest socialized to the vault's providers.
    function _settleBadDebtIfFlat(address a) internal {
        if (openMarketsMask[a] != 0) return;
        int256 c = collateralOf[a];
        if (c >= 0) return;
        uint256 debt = uint256(-c);
        collateralOf[a] = 0;
        uint256 paid = fund.coverBadDebt(a, address(vault), debt);
        uint256 socialized = debt - paid;
        if (socialized > 0) {
            vault.recordSocializedLoss(a, socialized);
            totalSocializedLoss += socialized;
        }
        totalBadDebt += debt;
        emit BadDebtSettled(a, debt, paid, socialized);
    }

    function _adlState(uint256 m, uint256 mark) internal view returns (int256 traderPnl, uint256 assets) {
        MarketState storage ms = marketState[m];
        int256 longPnl = RiskMath.floorDiv(int256(ms.longSize * mark) - int256(ms.longCost), int256(RiskMath.USD_SCALE));
        int256 shortPnl =
            RiskMath.floorDiv(int256(ms.shortCost) - int256(ms.shortSize * mark), int256(RiskMath.USD_SCALE));
        traderPnl = longPnl + shortPnl;
        assets = vault.totalAssets();
    }

    function _snapshot(address a) internal view returns (AccountSnapshot memory s) {
        s.ok = true;
        s.value = collateralOf[a];
        uint256 mask = openMarketsMask[a];
        for (uint256 m; mask != 0; ++m) {
            if (mask & 1 == 1) {
                (bool ok, uint256 mark) = oracle.tryMarkPrice(m);
                if (!ok) {
                    s.ok = false;
                    s.badMarket = m;
                    return s;
                }
                Position storage p = _positions[a][m];
                s.value += RiskMath.pnl(p.size, p.entryPrice, mark)
                    - RiskMath.fundingOwed(p.size, p.entryFundingIndex, marketState[m].fundingIndex);
                s.maintenanceMargin += RiskMath.maintenanceMargin(p.size, mark, _markets[m].mmrBps);
                s.notional += RiskMath.notional(p.size, mark);
            }
            mask >>= 1;
        }
    }

    function _snapshotOrRevert(address a) internal view returns (AccountSnapshot memory s) {
        s = _snapshot(a);
        if (!s.ok) revert OracleUnavailable(s.badMarket);
    }
}
