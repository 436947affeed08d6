# ruff: noqa: E501  (the RULES table keeps one rule per line: readable as a table)
"""/api/explain: "why would my order be rejected?", answered the way Zanbara's rules promise.

:func:`simulate_trade` runs ``Exchange.trade(market, size, leverage, 0)`` as ``eth_call`` from the
account at the latest block; :func:`explain` turns the custom error (decoded with the ABI in abis/) into
``{passes, layer, rule, detail, what_to_do, link}``. Every custom error of Exchange.sol, and
OracleHub.OracleInvalid, has an entry in :data:`RULES` (also rendered on /rules#errors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keeper.api import format as fmt
from keeper.publisher.calls import decode_error, fn

JUNIOR_TRADES = 5
SENIOR_TRADES = 20


@dataclass
class Context:
    """What the explanation may mention besides the error's own arguments (from the database)."""

    tier: int = 0
    trades: int = 0
    tiers: dict[int, dict[str, int]] = field(default_factory=dict)  # tier -> max_leverage, max_order_notional
    symbols: dict[int, str] = field(default_factory=dict)
    market: int | None = None
    leverage: int | None = None
    size_wad: int | None = None


@dataclass(frozen=True)
class Rule:
    layer: str  # user | system | market | liquidation | admin
    summary: str  # what the rule says (for /rules#errors)
    explain: Callable[[dict[str, Any], Context], tuple[str, str]]  # -> (detail, what_to_do)


def _next_tier(ctx: Context) -> str:
    """How to unlock the next tier, e.g. 'trade more to unlock junior (5 trades, 3 to go)'."""
    if ctx.tier == 0:
        return f"trade more to unlock junior ({JUNIOR_TRADES} trades, {max(0, JUNIOR_TRADES - ctx.trades)} to go)"
    if ctx.tier == 1:
        return f"trade more to unlock senior ({SENIOR_TRADES} trades, {max(0, SENIOR_TRADES - ctx.trades)} to go)"
    if ctx.tier == 2:
        return "ask the risk admin for the professional certification"
    return "no higher tier exists"


def _next_lev(ctx: Context) -> str:
    nt = min(ctx.tier + 1, 3)
    lim = ctx.tiers.get(nt)
    if ctx.tier >= 3 or lim is None:
        return _next_tier(ctx)
    return f"{_next_tier(ctx)}, which allows {lim['max_leverage']}x"


def _mkt(ctx: Context, m: Any) -> str:
    return ctx.symbols.get(int(m), f"market {m}")


def _usd(units: Any) -> str:
    return fmt.usd(int(units))


def _with_tier(c: Context, tier: Any) -> Context:
    """The context with the tier named by the error (the chain's view wins over the index's)."""
    return Context(int(tier), c.trades, c.tiers, c.symbols, c.market, c.leverage, c.size_wad)


def _lev(a: dict[str, Any], c: Context) -> tuple[str, str]:
    c = _with_tier(c, a["tier"])
    tier = fmt.tier_name(int(a["tier"]))
    return (
        f"your tier is {tier}, max {a['maxLeverage']}x, you tried {a['requested']}x",
        f"lower the leverage to {a['maxLeverage']}x or less, or {_next_lev(c)}",
    )


def _order(a: dict[str, Any], c: Context) -> tuple[str, str]:
    c = _with_tier(c, a["tier"])
    tier = fmt.tier_name(int(a["tier"]))
    nt = min(int(a["tier"]) + 1, 3)
    more = ""
    if int(a["tier"]) < 3 and nt in c.tiers:
        more = f" (max {_usd(c.tiers[nt]['max_order_notional'])} per order)"
    return (
        f"your tier is {tier}, max order {_usd(a['maxOrderNotional'])}, this order is {_usd(a['orderNotional'])} at mark",
        f"split or shrink the order to {_usd(a['maxOrderNotional'])} or less, or {_next_tier(c)}{more}",
    )


RULES: dict[str, Rule] = {
    # ---- user layer
    "EducationRequired": Rule("user", "a novice must complete the risk education before the first trade",
        lambda a, c: ("you are a novice and have not completed the risk education",
                      "complete the risk education (the risk admin records it on-chain), then retry")),
    "LeverageTooHigh": Rule("user", "an order may not ask for more leverage than your tier allows", _lev),
    "InvalidLeverage": Rule("user", "leverage must be at least 1x",
        lambda a, c: (f"leverage {a['leverage']}x is not valid", "choose a leverage of 1x or more")),
    "OrderTooLarge": Rule("user", "one order's notional at mark may not exceed your tier's maximum", _order),
    "PositionCapExceeded": Rule("user", "all your positions together, at mark, may not exceed the account cap",
        lambda a, c: (f"your positions would total {_usd(a['totalNotional'])}, the cap is {_usd(a['cap'])}",
                      "reduce the order so that your total stays under the cap, or close other positions")),
    "InsufficientMargin": Rule("user", "after an order, account value must cover total notional / leverage",
        lambda a, c: (f"the order needs {_usd(a['required'])} of account value, you would have {_usd(a['available'])}",
                      "deposit more collateral, lower the size, or choose a higher leverage within your tier")),
    "WithdrawalBelowInitialMargin": Rule("user", "a withdrawal may not take the account below its initial margin",
        lambda a, c: (f"after the withdrawal you would have {_usd(a['valueAfter'])}, at least {_usd(a['required'])} is required",
                      "withdraw less, or reduce your positions first")),
    "InsufficientCollateral": Rule("user", "you cannot withdraw more collateral than you hold",
        lambda a, c: (f"you hold {_usd(a['available'])}, you asked for {_usd(a['requested'])}", "withdraw less")),
    "ZeroAmount": Rule("user", "an order or transfer must be for a nonzero amount",
        lambda a, c: ("the amount is zero", "enter a nonzero size or amount")),
    # ---- system layer
    "OpenInterestCapExceeded": Rule("system", "open interest per market and side is capped",
        lambda a, c: (f"{_mkt(c, a['marketId'])} {'long' if a['isLong'] else 'short'} open interest would be "
                      f"{_usd(a['openInterest'])}, the cap is {_usd(a['cap'])}",
                      "trade a smaller size, trade the other side, or wait until open interest falls")),
    "GlobalOpenInterestCapExceeded": Rule("system", "open interest across all markets (at entry) is capped",
        lambda a, c: (f"global open interest would be {_usd(a['openInterest'])}, the cap is {_usd(a['cap'])}",
                      "trade a smaller size or wait until open interest falls")),
    # ---- market layer
    "MarketReduceOnly": Rule("market", "after a >10% move in 5 minutes the market is reduce-only for a cool-down",
        lambda a, c: (f"the circuit breaker of {_mkt(c, a['marketId'])} is tripped: only reductions are accepted",
                      "reduce or close positions only, or wait for the cool-down (15 minutes) to end")),
    "MarketPaused": Rule("market", "an invalid or stale oracle (or the guardian) pauses the market",
        lambda a, c: (f"{_mkt(c, a['marketId'])} is paused: its price is invalid or stale, or the guardian paused it",
                      "wait until the oracle answers again; the page shows each market's oracle status")),
    "OracleUnavailable": Rule("market", "no valid mark price is available",
        lambda a, c: (f"{_mkt(c, a['marketId'])} has no valid mark price", "wait until the oracle answers again")),
    "OracleInvalid": Rule("market", "oracle answers that are stale, non-positive, round 0 or from the future are rejected",
        lambda a, c: (f"the {('primary', 'secondary')[int(a['source'])] if int(a['source']) < 2 else 'price'} feed of "
                      f"{_mkt(c, a['marketId'])} is rejected: {fmt.ORACLE_REASONS[int(a['reason'])] if int(a['reason']) < 6 else a['reason']}",
                      "wait until the oracle answers again")),
    "PriceSlippage": Rule("market", "the fill price must be within your acceptable price",
        lambda a, c: (f"the mark is {fmt.price(int(a['markPrice']))}, your acceptable price is {fmt.price(int(a['acceptablePrice']))}",
                      "widen the acceptable price or retry")),
    "UnknownMarket": Rule("market", "the market must be listed",
        lambda a, c: (f"market {a['marketId']} is not listed", "choose a listed market (see /api/markets)")),
    "FundingNotDue": Rule("market", "funding is settled at most once per period",
        lambda a, c: (f"the next funding period of {_mkt(c, a['marketId'])} starts at {fmt.utc(int(a['nextPeriodStart']))}",
                      "wait until the period starts")),
    "UnknownFeed": Rule("market", "the market must have price feeds",
        lambda a, c: (f"{_mkt(c, a['marketId'])} has no price feed", "choose a listed market (see /api/markets)")),
    # ---- liquidation
    "NotLiquidatable": Rule("liquidation", "only accounts under the liquidation line (110%) may be liquidated",
        lambda a, c: (f"the margin ratio is {fmt.bps_pct(int(a['marginRatioBps']))}", "nothing to do: the account is healthy")),
    "AdlNotTriggered": Rule("liquidation", "ADL runs only while traders' profit exceeds 45% of the vault's assets",
        lambda a, c: (f"traders' PnL in {_mkt(c, a['marketId'])} is {_usd(a['traderPnl'])} against vault assets {_usd(a['vaultAssets'])}",
                      "nothing to do: auto-deleveraging is not triggered")),
    "AdlPositionNotProfitable": Rule("liquidation", "ADL reduces only profitable positions",
        lambda a, c: (f"the position in {_mkt(c, a['marketId'])} is not in profit", "nothing to do")),
    # ---- admin / technical
    "AccessControlUnauthorizedAccount": Rule("admin", "this function is reserved to a role (admin, risk admin, guardian)",
        lambda a, c: ("the caller lacks the required role", "only the role holder may call this")),
    "AccessControlBadConfirmation": Rule("admin", "role renouncement must be confirmed by the account itself",
        lambda a, c: ("bad confirmation", "renounce from the account itself")),
    "BadParameter": Rule("admin", "an administrative parameter is out of range",
        lambda a, c: ("a parameter is out of range", "check the parameters")),
    "LengthMismatch": Rule("admin", "batch arrays must have the same length",
        lambda a, c: ("array lengths differ", "pass arrays of equal length")),
    "ReentrancyGuardReentrantCall": Rule("admin", "the exchange cannot be re-entered",
        lambda a, c: ("re-entrant call", "call the exchange directly")),
    "SafeERC20FailedOperation": Rule("user", "a collateral token transfer failed (allowance or balance)",
        lambda a, c: ("the token transfer failed", "check your token balance and allowance")),
    "DivisionByZero": Rule("admin", "an internal division by zero",
        lambda a, c: ("internal arithmetic error", "report it: this should not happen")),
}  # fmt: skip

LAYER_ANCHOR = {"user": "user-layer", "system": "system-layer", "market": "market-layer",
                "liquidation": "liquidation", "admin": "errors"}  # fmt: skip


def explain(name: str, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """The answer for error ``name`` with decoded ``args`` (JSON-safe)."""
    rule = RULES.get(name)
    if rule is None:
        return {"passes": False, "layer": "unknown", "rule": name, "detail": "the order would revert",
                "what_to_do": "see the rules", "link": "/rules"}  # fmt: skip
    detail, todo = rule.explain(args, ctx)
    return {"passes": False, "layer": rule.layer, "rule": name, "detail": detail, "what_to_do": todo,
            "link": f"/rules#{name}", "args": {k: _jsonable(v) for k, v in args.items()}}  # fmt: skip


def _jsonable(v: Any) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, bytes):
        return "0x" + v.hex()
    return str(v)


def explain_revert(data: str | None, ctx: Context) -> dict[str, Any]:
    decoded = decode_error(data)
    if decoded is None:
        return {"passes": False, "layer": "unknown", "rule": "unknown",
                "detail": "the order would revert without a known reason", "what_to_do": "see the rules",
                "link": "/rules"}  # fmt: skip
    name, args = decoded
    if name in ("Error", "Panic"):
        return {"passes": False, "layer": "unknown", "rule": name, "detail": "the order would revert",
                "what_to_do": "see the rules", "link": "/rules"}  # fmt: skip
    return explain(name, args, ctx)


async def simulate_trade(rpc: Any, exchange: str, account: str, market: int, size_wad: int, leverage: int,
                         ctx: Context) -> dict[str, Any]:  # fmt: skip
    """eth_call of trade(market, size, leverage, 0) from ``account`` at latest, explained."""
    from keeper.chain.rpc import RpcError

    method, params = fn("Exchange", "trade").call(exchange, market, size_wad, leverage, 0, sender=account)
    params[0]["gas"] = hex(5_000_000)
    try:
        await rpc.call(method, params)
    except RpcError as exc:
        return explain_revert(exc.revert_data, ctx)
    return {"passes": True, "layer": None, "rule": None,
            "detail": f"the order passes every rule at the latest block (leverage {leverage}x)",
            "what_to_do": "nothing: you may send it (prices can move before it is mined)", "link": "/rules"}  # fmt: skip
