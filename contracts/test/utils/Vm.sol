// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @notice The subset of forge's cheatcodes this suite uses (forge-std is not available offline).
/// Signatures follow forge's cheatcode ABI; the contract lives at the fixed cheatcode address.
interface Vm {
    struct Log {
        bytes32[] topics;
        bytes data;
        address emitter;
    }

    // time and blocks
    function warp(uint256 newTimestamp) external;
    function roll(uint256 newHeight) external;

    // callers
    function prank(address msgSender) external;
    function startPrank(address msgSender) external;
    function stopPrank() external;

    // expectations
    function expectRevert(bytes calldata revertData) external;
    function expectRevert(bytes4 revertSelector) external;
    function expectRevert() external;
    function expectEmit(bool checkTopic1, bool checkTopic2, bool checkTopic3, bool checkData) external;
    function expectEmit(bool checkTopic1, bool checkTopic2, bool checkTopic3, bool checkData, address emitter)
        external;
    function expectEmit(address emitter) external;
    function expectEmit() external;

    // logs
    function recordLogs() external;
    function getRecordedLogs() external returns (Log[] memory logs);

    // fuzzing and misc
    function assume(bool condition) external pure;
    function label(address account, string calldata newLabel) external;
    function addr(uint256 privateKey) external pure returns (address keyAddr);
    function deal(address account, uint256 newBalance) external;
    function snapshotState() external returns (uint256 snapshotId);
    function revertToState(uint256 snapshotId) external returns (bool success);
}

address constant VM_ADDRESS = address(uint160(uint256(keccak256("hevm cheat code"))));
