// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";

/// @title InsuranceFund
/// @notice Holds the fund's collateral: its balance is the token's balanceOf(this), readable by anyone.
/// Income: a share of every trade's notional and half of every liquidation penalty. Payouts: bad debt
/// only, to the vault. Cumulative totals make every published figure checkable against chain state.
contract InsuranceFund is AccessControl {
    using SafeERC20 for IERC20;

    bytes32 public constant EXCHANGE_ROLE = keccak256("EXCHANGE_ROLE");

    enum IncomeKind {
        TradingFee,
        LiquidationPenalty,
        Donation
    }

    IERC20 public immutable collateral;
    uint256 public totalFeeIncome;
    uint256 public totalPenaltyIncome;
    uint256 public totalDonations;
    uint256 public totalPayouts;

    event FundIncome(IncomeKind indexed kind, address indexed account, uint256 amount, uint256 balanceAfter);
    event FundPayout(address indexed account, address indexed to, uint256 requested, uint256 paid, uint256 balanceAfter);

    constructor(IERC20 collateral_, address admin) {
        collateral = collateral_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    function balance() public view returns (uint256) {
        return collateral.balanceOf(address(this));
    }

    /// @notice Books income the exchange has already transferred in.
    function recordIncome(IncomeKind kind, address account, uint256 amount) external onlyRole(EXCHANGE_ROLE) {
        if (kind == IncomeKind.TradingFee) totalFeeIncome += amount;
        else totalPenaltyIncome += amount;
        emit FundIncome(kind, account, amount, balance());
    }

    /// @notice Anyone may add to the fund (seeding, grants); recorded apart from fees and penalties.
    function donate(uint256 amount) external {
        collateral.safeTransferFrom(msg.sender, address(this), amount);
        totalDonations += amount;
        emit FundIncome(IncomeKind.Donation, msg.sender, amount, balance());
    }

    /// @notice Pays bad debt to `to` (the vault) up to what the fund holds; returns what it paid.
    function coverBadDebt(address account, address to, uint256 amount)
        external
        onlyRole(EXCHANGE_ROLE)
        returns (uint256 paid)
    {
        uint256 bal = balance();
        paid = amount < bal ? amount : bal;
        if (paid > 0) {
            collateral.safeTransfer(to, paid);
            totalPayouts += paid;
        }
        emit FundPayout(account, to, amount, paid, balance());
    }
}
