// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IAggregatorV3} from "../interfaces/IAggregatorV3.sol";

/// @notice A settable Chainlink-style feed for dev chains and tests: answer, round and updatedAt are
/// all under the caller's control so that stale, zero, round-0 and future answers can be staged.
contract MockAggregator is IAggregatorV3 {
    uint8 public immutable override decimals;
    string public override description;
    address public owner;

    uint80 public roundId;
    int256 public answer;
    uint256 public updatedAt;

    event AnswerUpdated(int256 indexed current, uint256 indexed roundId, uint256 updatedAt);

    error NotOwner();

    constructor(uint8 decimals_, string memory description_, int256 initialAnswer) {
        decimals = decimals_;
        description = description_;
        owner = msg.sender;
        _set(initialAnswer, 1, block.timestamp);
    }

    function transferOwnership(address newOwner) external {
        if (msg.sender != owner) revert NotOwner();
        owner = newOwner;
    }

    /// @notice A new round at the current block time.
    function setAnswer(int256 answer_) external {
        if (msg.sender != owner) revert NotOwner();
        _set(answer_, roundId + 1, block.timestamp);
    }

    /// @notice Full control, for staging invalid answers (round 0, stale or future timestamps).
    function setRoundData(int256 answer_, uint80 roundId_, uint256 updatedAt_) external {
        if (msg.sender != owner) revert NotOwner();
        _set(answer_, roundId_, updatedAt_);
    }

    function latestRoundData() external view override returns (uint80, int256, uint256, uint256, uint80) {
        return (roundId, answer, updatedAt, updatedAt, roundId);
    }

    function _set(int256 answer_, uint80 roundId_, uint256 updatedAt_) private {
        answer = answer_;
        roundId = roundId_;
        updatedAt = updatedAt_;
        emit AnswerUpdated(answer_, roundId_, updatedAt_);
    }
}
