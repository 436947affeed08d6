// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title LiquidityVault
/// @notice The counterparty of every position: liquidity providers deposit collateral for shares; the
/// exchange draws traders' profits from it and pays their losses and fee share into it.
contract LiquidityVault is ERC20, AccessControl {
    using SafeERC20 for IERC20;

    bytes32 public constant EXCHANGE_ROLE = keccak256("EXCHANGE_ROLE");

    IERC20 public immutable collateral;
    uint256 public totalSocializedLoss;

    event LiquidityAdded(address indexed provider, uint256 amount, uint256 shares, uint256 assetsAfter);
    event LiquidityRemoved(address indexed provider, uint256 amount, uint256 shares, uint256 assetsAfter);
    event VaultTransfer(address indexed to, uint256 amount, uint256 assetsAfter);
    event SocializedLoss(address indexed account, uint256 amount, uint256 totalSocialized);

    error VaultInsufficientAssets(uint256 available, uint256 requested);
    error ZeroAmount();

    constructor(IERC20 collateral_, address admin) ERC20("Zanbara LP", "zLP") {
        collateral = collateral_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function totalAssets() public view returns (uint256) {
        return collateral.balanceOf(address(this));
    }

    function deposit(uint256 amount) external returns (uint256 shares) {
        if (amount == 0) revert ZeroAmount();
        uint256 assets = totalAssets();
        uint256 supply = totalSupply();
        shares = supply == 0 || assets == 0 ? amount : (amount * supply) / assets;
        collateral.safeTransferFrom(msg.sender, address(this), amount);
        _mint(msg.sender, shares);
        emit LiquidityAdded(msg.sender, amount, shares, totalAssets());
    }

    function withdraw(uint256 shares) external returns (uint256 amount) {
        if (shares == 0) revert ZeroAmount();
        amount = (shares * totalAssets()) / totalSupply();
        _burn(msg.sender, shares);
        collateral.safeTransfer(msg.sender, amount);
        emit LiquidityRemoved(msg.sender, amount, shares, totalAssets());
    }

    /// @notice Pays traders' realized profit (and funding received) to the exchange.
    function pay(address to, uint256 amount) external onlyRole(EXCHANGE_ROLE) {
        uint256 assets = totalAssets();
        if (amount > assets) revert VaultInsufficientAssets(assets, amount);
        collateral.safeTransfer(to, amount);
        emit VaultTransfer(to, amount, totalAssets());
    }

    /// @notice Records bad debt the insurance fund could not cover: a loss to liquidity providers.
    function recordSocializedLoss(address account, uint256 amount) external onlyRole(EXCHANGE_ROLE) {
        totalSocializedLoss += amount;
        emit SocializedLoss(account, amount, totalSocializedLoss);
    }
}
