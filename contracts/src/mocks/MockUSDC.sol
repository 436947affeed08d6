// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice The 6-decimal USD stablecoin of the dev chain. The faucet exists only here: a real
/// deployment points the exchange at the chain's own USDC.
contract MockUSDC is ERC20 {
    uint256 public constant FAUCET_LIMIT = 1_000_000e6;

    error FaucetLimit(uint256 limit, uint256 requested);

    constructor() ERC20("Mock USD Coin", "USDC") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Mints up to FAUCET_LIMIT to `to` per call.
    function faucet(address to, uint256 amount) external {
        if (amount > FAUCET_LIMIT) revert FaucetLimit(FAUCET_LIMIT, amount);
        _mint(to, amount);
    }
}
