// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IAggregatorV3} from "./interfaces/IAggregatorV3.sol";

/// @title OracleHub
/// @notice The market layer's price: for each market, the median of a primary feed, a secondary feed
/// and an on-chain EMA of the primary; invalid answers (stale, non-positive, round 0, future) are
/// rejected, and a move of more than 10% within 5 minutes trips a circuit breaker (reduce-only).
contract OracleHub is AccessControl {
    bytes32 public constant GUARDIAN_ROLE = keccak256("GUARDIAN_ROLE");

    enum Source {
        Primary,
        Secondary
    }

    enum Reason {
        None,
        NoFeed,
        NonPositive,
        RoundZero,
        FromFuture,
        Stale
    }

    enum Status {
        Active,
        ReduceOnly,
        Paused
    }

    struct Feed {
        IAggregatorV3 primary;
        IAggregatorV3 secondary;
        uint64 heartbeat;
        uint64 emaTime;
        uint64 refTime;
        uint64 breakerUntil;
        uint256 ema;
        uint256 refPrice;
        bool guardianPaused;
    }

    /// EMA time constant: an answer moves the EMA by min(dt, EMA_WINDOW) / EMA_WINDOW of the gap.
    uint256 public constant EMA_WINDOW = 600;
    uint256 public breakerWindow = 300;
    uint256 public breakerMoveBps = 1_000;
    uint256 public breakerCooldown = 900;

    mapping(uint256 => Feed) internal _feeds;

    event FeedSet(uint256 indexed marketId, address primary, address secondary, uint256 heartbeat);
    event PriceRefreshed(uint256 indexed marketId, uint256 primary, uint256 secondary, uint256 ema, uint256 mark);
    event CircuitBreakerTripped(uint256 indexed marketId, uint256 refPrice, uint256 price, uint256 until);
    event MarketPauseSet(uint256 indexed marketId, bool paused);
    event BreakerParamsSet(uint256 window, uint256 moveBps, uint256 cooldown);

    error OracleInvalid(uint256 marketId, Source source, Reason reason);
    error UnknownFeed(uint256 marketId);
    error BadParameter();

    constructor(address admin, address guardian) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(GUARDIAN_ROLE, guardian);
    }

    // ---------------------------------------------------------------- admin

    function setFeed(uint256 marketId, IAggregatorV3 primary, IAggregatorV3 secondary, uint64 heartbeat)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        if (address(primary) == address(0) || address(secondary) == address(0) || heartbeat == 0) {
            revert BadParameter();
        }
        Feed storage f = _feeds[marketId];
        f.primary = primary;
        f.secondary = secondary;
        f.heartbeat = heartbeat;
        f.ema = 0;
        f.emaTime = 0;
        f.refPrice = 0;
        f.refTime = 0;
        emit FeedSet(marketId, address(primary), address(secondary), heartbeat);
    }

    function setBreakerParams(uint256 window, uint256 moveBps, uint256 cooldown)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        if (window == 0 || moveBps == 0) revert BadParameter();
        breakerWindow = window;
        breakerMoveBps = moveBps;
        breakerCooldown = cooldown;
        emit BreakerParamsSet(window, moveBps, cooldown);
    }

    /// @notice The guardian's brake: pauses (or resumes) a market's price, hence all trading on it.
    function setPaused(uint256 marketId, bool paused) external onlyRole(GUARDIAN_ROLE) {
        _feeds[marketId].guardianPaused = paused;
        emit MarketPauseSet(marketId, paused);
    }

    // ---------------------------------------------------------------- reads

    /// @notice One feed's answer scaled to 1e18, with the reason it is rejected (None when valid).
    function readSource(uint256 marketId, Source source) public view returns (uint256 price, Reason reason) {
        Feed storage f = _feeds[marketId];
        IAggregatorV3 agg = source == Source.Primary ? f.primary : f.secondary;
        if (address(agg) == address(0)) return (0, Reason.NoFeed);
        (uint80 roundId, int256 answer,, uint256 updatedAt,) = agg.latestRoundData();
        if (roundId == 0) return (0, Reason.RoundZero);
        if (answer <= 0) return (0, Reason.NonPositive);
        if (updatedAt > block.timestamp) return (0, Reason.FromFuture);
        if (block.timestamp - updatedAt > f.heartbeat) return (0, Reason.Stale);
        uint8 dec = agg.decimals();
        price = dec <= 18 ? uint256(answer) * 10 ** (18 - dec) : uint256(answer) / 10 ** (dec - 18);
    }

    /// @notice Mark price without reverting: ok is false when either feed is rejected or the market is paused.
    function tryMarkPrice(uint256 marketId) public view returns (bool ok, uint256 mark) {
        (ok, mark,,,) = _mark(marketId);
    }

    /// @notice Mark price; reverts with OracleInvalid naming the source and the reason.
    function markPrice(uint256 marketId) external view returns (uint256) {
        (bool ok, uint256 mark, Source src, Reason reason,) = _mark(marketId);
        if (!ok) revert OracleInvalid(marketId, src, reason);
        return mark;
    }

    function status(uint256 marketId) public view returns (Status) {
        (bool ok,,,,) = _mark(marketId);
        if (!ok) return Status.Paused;
        Feed storage f = _feeds[marketId];
        if (block.timestamp < f.breakerUntil) return Status.ReduceOnly;
        (uint256 p,) = readSource(marketId, Source.Primary);
        if (f.refTime != 0 && block.timestamp - f.refTime <= breakerWindow) {
            uint256 move = p > f.refPrice ? p - f.refPrice : f.refPrice - p;
            if (move * 10_000 > breakerMoveBps * f.refPrice) return Status.ReduceOnly;
        }
        return Status.Active;
    }

    function feed(uint256 marketId) external view returns (Feed memory) {
        return _feeds[marketId];
    }

    // ---------------------------------------------------------------- refresh

    /// @notice Folds the primary answer into the EMA and the circuit breaker; callable by anyone (the
    /// exchange calls it on every trade, liquidation and settlement). Returns validity, mark and status.
    function refresh(uint256 marketId) external returns (bool ok, uint256 mark, Status st) {
        Feed storage f = _feeds[marketId];
        if (address(f.primary) == address(0)) revert UnknownFeed(marketId);
        (uint256 p, Reason rp) = readSource(marketId, Source.Primary);
        (uint256 s, Reason rs) = readSource(marketId, Source.Secondary);
        if (rp != Reason.None || rs != Reason.None || f.guardianPaused) return (false, 0, Status.Paused);

        uint256 nowTs = block.timestamp;
        f.ema = _projectEma(f, p);
        f.emaTime = uint64(nowTs);

        if (f.refTime == 0 || nowTs - f.refTime > breakerWindow) {
            f.refPrice = p;
            f.refTime = uint64(nowTs);
        } else {
            uint256 move = p > f.refPrice ? p - f.refPrice : f.refPrice - p;
            if (move * 10_000 > breakerMoveBps * f.refPrice) {
                uint256 until = nowTs + breakerCooldown;
                f.breakerUntil = uint64(until);
                emit CircuitBreakerTripped(marketId, f.refPrice, p, until);
                f.refPrice = p;
                f.refTime = uint64(nowTs);
            }
        }
        mark = _median(p, s, f.ema);
        emit PriceRefreshed(marketId, p, s, f.ema, mark);
        st = nowTs < f.breakerUntil ? Status.ReduceOnly : Status.Active;
        return (true, mark, st);
    }

    // ---------------------------------------------------------------- internals

    function _mark(uint256 marketId)
        internal
        view
        returns (bool ok, uint256 mark, Source src, Reason reason, uint256 primary)
    {
        Feed storage f = _feeds[marketId];
        (uint256 p, Reason rp) = readSource(marketId, Source.Primary);
        if (rp != Reason.None) return (false, 0, Source.Primary, rp, 0);
        (uint256 s, Reason rs) = readSource(marketId, Source.Secondary);
        if (rs != Reason.None) return (false, 0, Source.Secondary, rs, p);
        if (f.guardianPaused) return (false, 0, Source.Primary, Reason.None, p);
        return (true, _median(p, s, _projectEma(f, p)), Source.Primary, Reason.None, p);
    }

    /// @dev The EMA as a refresh in this block would leave it, so that views and transactions in the
    /// same block agree on the mark to the wei.
    function _projectEma(Feed storage f, uint256 p) internal view returns (uint256) {
        if (f.emaTime == 0 || f.ema == 0) return p;
        if (block.timestamp <= f.emaTime) return f.ema;
        uint256 dt = block.timestamp - f.emaTime;
        if (dt > EMA_WINDOW) dt = EMA_WINDOW;
        if (p >= f.ema) return f.ema + ((p - f.ema) * dt) / EMA_WINDOW;
        return f.ema - ((f.ema - p) * dt) / EMA_WINDOW;
    }

    function _median(uint256 a, uint256 b, uint256 c) internal pure returns (uint256) {
        if (a > b) (a, b) = (b, a);
        if (b > c) (b, c) = (c, b);
        if (a > b) (a, b) = (b, a);
        return b;
    }
}
