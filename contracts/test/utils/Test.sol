// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Vm, VM_ADDRESS} from "./Vm.sol";

/// @notice A minimal test base: cheatcodes, assertions that revert with the values on failure, and a
/// `bound` for fuzz inputs. forge treats a contract with `IS_TEST` and `test*` functions as a suite.
abstract contract Test {
    bool public IS_TEST = true;
    Vm internal constant vm = Vm(VM_ADDRESS);

    // ------------------------------------------------------------------ address helpers

    function makeAddr(string memory name) internal returns (address a) {
        a = vm.addr(uint256(keccak256(bytes(name))));
        vm.label(a, name);
    }

    // ------------------------------------------------------------------ fuzz helpers

    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        require(lo <= hi, "bound: lo > hi");
        if (lo == 0 && hi == type(uint256).max) return x;
        return lo + (x % (hi - lo + 1));
    }

    // ------------------------------------------------------------------ assertions

    function fail(string memory message) internal pure {
        revert(message);
    }

    function assertTrue(bool c) internal pure {
        if (!c) fail("assertTrue failed");
    }

    function assertTrue(bool c, string memory m) internal pure {
        if (!c) fail(string.concat("assertTrue failed: ", m));
    }

    function assertFalse(bool c) internal pure {
        if (c) fail("assertFalse failed");
    }

    function assertFalse(bool c, string memory m) internal pure {
        if (c) fail(string.concat("assertFalse failed: ", m));
    }

    function assertEq(uint256 a, uint256 b) internal pure {
        assertEq(a, b, "");
    }

    function assertEq(uint256 a, uint256 b, string memory m) internal pure {
        if (a != b) fail(string.concat("assertEq(uint) failed: ", m, " left=", _u(a), " right=", _u(b)));
    }

    function assertEq(int256 a, int256 b) internal pure {
        assertEq(a, b, "");
    }

    function assertEq(int256 a, int256 b, string memory m) internal pure {
        if (a != b) fail(string.concat("assertEq(int) failed: ", m, " left=", _i(a), " right=", _i(b)));
    }

    function assertEq(address a, address b) internal pure {
        assertEq(a, b, "");
    }

    function assertEq(address a, address b, string memory m) internal pure {
        if (a != b) fail(string.concat("assertEq(address) failed: ", m));
    }

    function assertEq(bool a, bool b) internal pure {
        assertEq(a, b, "");
    }

    function assertEq(bool a, bool b, string memory m) internal pure {
        if (a != b) fail(string.concat("assertEq(bool) failed: ", m, a ? " left=true" : " left=false"));
    }

    function assertEq(bytes32 a, bytes32 b, string memory m) internal pure {
        if (a != b) fail(string.concat("assertEq(bytes32) failed: ", m));
    }

    function assertGt(uint256 a, uint256 b, string memory m) internal pure {
        if (!(a > b)) fail(string.concat("assertGt failed: ", m, " left=", _u(a), " right=", _u(b)));
    }

    function assertGe(uint256 a, uint256 b, string memory m) internal pure {
        if (!(a >= b)) fail(string.concat("assertGe failed: ", m, " left=", _u(a), " right=", _u(b)));
    }

    function assertLt(uint256 a, uint256 b, string memory m) internal pure {
        if (!(a < b)) fail(string.concat("assertLt failed: ", m, " left=", _u(a), " right=", _u(b)));
    }

    function assertLe(uint256 a, uint256 b, string memory m) internal pure {
        if (!(a <= b)) fail(string.concat("assertLe failed: ", m, " left=", _u(a), " right=", _u(b)));
    }

    function assertGt(int256 a, int256 b, string memory m) internal pure {
        if (!(a > b)) fail(string.concat("assertGt(int) failed: ", m, " left=", _i(a), " right=", _i(b)));
    }

    function assertGe(int256 a, int256 b, string memory m) internal pure {
        if (!(a >= b)) fail(string.concat("assertGe(int) failed: ", m, " left=", _i(a), " right=", _i(b)));
    }

    function assertLt(int256 a, int256 b, string memory m) internal pure {
        if (!(a < b)) fail(string.concat("assertLt(int) failed: ", m, " left=", _i(a), " right=", _i(b)));
    }

    function assertLe(int256 a, int256 b, string memory m) internal pure {
        if (!(a <= b)) fail(string.concat("assertLe(int) failed: ", m, " left=", _i(a), " right=", _i(b)));
    }

    /// @notice |a - b| <= maxDelta.
    function assertApproxEqAbs(uint256 a, uint256 b, uint256 maxDelta, string memory m) internal pure {
        uint256 d = a > b ? a - b : b - a;
        if (d > maxDelta) {
            fail(string.concat("assertApproxEqAbs failed: ", m, " left=", _u(a), " right=", _u(b), " delta=", _u(d)));
        }
    }

    function assertApproxEqAbs(int256 a, int256 b, uint256 maxDelta, string memory m) internal pure {
        uint256 d = a > b ? uint256(a - b) : uint256(b - a);
        if (d > maxDelta) {
            fail(string.concat("assertApproxEqAbs(int) failed: ", m, " left=", _i(a), " right=", _i(b), " delta=", _u(d)));
        }
    }

    /// @notice Alias kept for readability in the worked examples.
    function assertApproxEq(uint256 a, uint256 b, uint256 maxDelta, string memory m) internal pure {
        assertApproxEqAbs(a, b, maxDelta, m);
    }

    // ------------------------------------------------------------------ formatting

    function _u(uint256 v) internal pure returns (string memory) {
        if (v == 0) return "0";
        uint256 len;
        for (uint256 t = v; t != 0; t /= 10) ++len;
        bytes memory b = new bytes(len);
        for (; v != 0; v /= 10) b[--len] = bytes1(uint8(48 + (v % 10)));
        return string(b);
    }

    function _i(int256 v) internal pure returns (string memory) {
        if (v >= 0) return _u(uint256(v));
        return string.concat("-", _u(v == type(int256).min ? uint256(type(int256).max) + 1 : uint256(-v)));
    }
}
