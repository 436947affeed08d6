"""Deploys the whole Zanbara stack on a dev chain and writes the deployments file.

One deployer key signs everything locally (eth_account) with a locally managed nonce: all
transactions are sent first, then all receipts awaited, so a deployment on anvil takes well under a
second. Contract addresses are known in advance (CREATE: deployer + nonce), which is what lets the
configuration transactions be sent before the contracts they call are mined.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import encode
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from web3 import Web3

from keeper.chain.artifacts import load_artifact
from keeper.chain.connect import describe_rpc_error, rpc_url
from keeper.chain.deployments import Deployment, Market
from keeper.errors import KeeperError

USDC = 10**6
FEED_DECIMALS = 8
EXCHANGE_ROLE = keccak(text="EXCHANGE_ROLE")
FAUCET_LIMIT = 1_000_000 * USDC  # MockUSDC.FAUCET_LIMIT, per call


@dataclass(frozen=True)
class MarketSpec:
    symbol: str
    price_usd: float
    oi_cap_usd: int  # per side
    mmr_bps: int = 200


DEFAULT_MARKETS: tuple[MarketSpec, ...] = (
    MarketSpec("BTC", 60_000, 20_000_000),
    MarketSpec("ETH", 2_000, 20_000_000),
    MarketSpec("SOL", 150, 5_000_000),
)

# Gas limits of the configuration calls (generous: only gas used is paid; measured use is ~1/2).
_CALL_GAS = {
    "grantRole": 120_000,
    "listMarket": 250_000,
    "setFeed": 250_000,
    "faucet": 120_000,
    "approve": 80_000,
    "deposit": 250_000,
    "donate": 250_000,
}
_WEI = 10**18


def _feed_answer(price_usd: float) -> int:
    return int(round(price_usd * 10**FEED_DECIMALS))


def _create_address(sender: str, nonce: int) -> str:
    import rlp  # eth-rlp's dependency, always present with eth_account

    return to_checksum_address(keccak(rlp.encode([bytes.fromhex(sender[2:]), nonce]))[12:])


@dataclass
class _Tx:
    label: str
    to: str | None
    data: bytes
    gas: int


class _Plan:
    """Transactions of one sender, in nonce order, with the addresses their CREATEs will have."""

    def __init__(self, w3: Web3, sender: str, first_nonce: int) -> None:
        self.w3 = w3
        self.sender = sender
        self.first_nonce = first_nonce
        self.txs: list[_Tx] = []
        self._abis: dict[str, list[dict[str, Any]]] = {}

    def _contract(self, name: str) -> Any:
        return self.w3.eth.contract(abi=self._abis[name])

    def create(self, name: str, label: str, ctor_types: Sequence[str], args: Sequence[Any]) -> str:
        abi, code = load_artifact(name)
        self._abis[name] = abi
        data = code + (encode(list(ctor_types), list(args)) if ctor_types else b"")
        address = _create_address(self.sender, self.first_nonce + len(self.txs))
        try:
            gas = self.w3.eth.estimate_gas({"from": self.sender, "data": Web3.to_hex(data)})
        except Exception as exc:  # noqa: BLE001
            raise KeeperError(f"cannot estimate gas to deploy {label}: {describe_rpc_error(exc)}") from None
        self.txs.append(_Tx(label, None, data, math.ceil(gas * 1.2)))
        return address

    def call(self, name: str, address: str, fn: str, args: Sequence[Any], label: str | None = None) -> None:
        data = bytes.fromhex(self._contract(name).encode_abi(fn, args=list(args))[2:])
        self.txs.append(_Tx(label or f"{name}.{fn}", address, data, _CALL_GAS[fn]))


def _fees(w3: Web3) -> dict[str, int]:
    block = w3.eth.get_block("latest")
    base = block.get("baseFeePerGas")
    if base is None:
        return {"gasPrice": int(w3.eth.gas_price)}
    tip = 10**9
    return {"maxFeePerGas": 2 * int(base) + tip, "maxPriorityFeePerGas": tip, "type": 2}


def _price_per_gas(fees: dict[str, int]) -> int:
    return fees.get("maxFeePerGas", fees.get("gasPrice", 0))


def deploy(
    w3: Web3,
    deployer_key: str,
    risk_admin: str | None = None,
    guardian: str | None = None,
    *,
    markets: Sequence[MarketSpec] = DEFAULT_MARKETS,
    vault_seed_usd: int = 20_000_000,
    fund_seed_usd: int = 500_000,
    heartbeat: int = 3_600,
    receipt_timeout: float = 120.0,
    log: Callable[[str], None] | None = None,
) -> Deployment:
    """Deploys MockUSDC, two feeds per market, OracleHub, LiquidityVault, InsuranceFund and Exchange;
    wires roles, lists and prices the markets, seeds the vault and the insurance fund.

    ``risk_admin`` and ``guardian`` are addresses (default: the deployer). Returns the Deployment;
    writing it to a file is the caller's business.
    """
    say = log or (lambda _msg: None)
    if not deployer_key:
        raise KeeperError("missing key: set dev.deployer_key in the config or KEEPER_DEV__DEPLOYER_KEY")
    try:
        acct = Account.from_key(deployer_key)
    except Exception:  # noqa: BLE001 - never echo the key
        raise KeeperError("dev.deployer_key is not a valid private key (64 hex digits)") from None
    me = acct.address
    risk_admin = to_checksum_address(risk_admin or me)
    guardian = to_checksum_address(guardian or me)

    try:
        chain_id = int(w3.eth.chain_id)
        nonce0 = int(w3.eth.get_transaction_count(me, "pending"))
        balance = int(w3.eth.get_balance(me))
        fees = _fees(w3)
    except Exception as exc:  # noqa: BLE001
        raise KeeperError(f"cannot reach RPC {rpc_url(w3)}: {describe_rpc_error(exc)}") from None

    plan = _Plan(w3, me, nonce0)
    usdc = plan.create("MockUSDC", "MockUSDC", (), ())
    feeds: list[tuple[MarketSpec, str, str]] = []
    for spec in markets:
        answer = _feed_answer(spec.price_usd)
        desc = f"{spec.symbol} / USD"
        p = plan.create(
            "MockAggregator", f"{desc} primary", ("uint8", "string", "int256"), (FEED_DECIMALS, desc, answer)
        )
        s = plan.create(
            "MockAggregator", f"{desc} secondary", ("uint8", "string", "int256"),
            (FEED_DECIMALS, f"{desc} (secondary)", answer),
        )  # fmt: skip
        feeds.append((spec, p, s))
    oracle = plan.create("OracleHub", "OracleHub", ("address", "address"), (me, guardian))
    vault = plan.create("LiquidityVault", "LiquidityVault", ("address", "address"), (usdc, me))
    fund = plan.create("InsuranceFund", "InsuranceFund", ("address", "address"), (usdc, me))
    exchange = plan.create(
        "Exchange", "Exchange",
        ("address", "address", "address", "address", "address", "address"),
        (usdc, oracle, vault, fund, me, risk_admin),
    )  # fmt: skip

    plan.call("LiquidityVault", vault, "grantRole", (EXCHANGE_ROLE, exchange))
    plan.call("InsuranceFund", fund, "grantRole", (EXCHANGE_ROLE, exchange))
    for i, (spec, p, s) in enumerate(feeds):
        cap = spec.oi_cap_usd * USDC
        plan.call(
            "Exchange",
            exchange,
            "listMarket",
            (spec.symbol, spec.mmr_bps, cap, cap),
            f"listMarket {spec.symbol}",
        )
        plan.call("OracleHub", oracle, "setFeed", (i, p, s, heartbeat), f"setFeed {spec.symbol}")

    seed_total = (vault_seed_usd + fund_seed_usd) * USDC
    left = seed_total
    while left > 0:
        amount = min(left, FAUCET_LIMIT)
        plan.call("MockUSDC", usdc, "faucet", (me, amount))
        left -= amount
    if vault_seed_usd:
        plan.call("MockUSDC", usdc, "approve", (vault, vault_seed_usd * USDC), "approve vault")
        plan.call("LiquidityVault", vault, "deposit", (vault_seed_usd * USDC,), "seed vault")
    if fund_seed_usd:
        plan.call("MockUSDC", usdc, "approve", (fund, fund_seed_usd * USDC), "approve fund")
        plan.call("InsuranceFund", fund, "donate", (fund_seed_usd * USDC,), "seed insurance fund")

    total_gas = sum(t.gas for t in plan.txs)
    need = total_gas * _price_per_gas(fees)
    if balance < need:
        need_eth = math.ceil(need / _WEI * 100) / 100
        raise KeeperError(
            f"deployer {me} has {balance / _WEI:.4g} ETH, needs at least ~{need_eth:g} ETH for deployment "
            f"({len(plan.txs)} transactions, {total_gas:,} gas)"
        )

    say(f"deploying from {me} on chain {chain_id}: {len(plan.txs)} transactions")
    t0 = time.monotonic()
    hashes: list[bytes] = []
    for i, tx in enumerate(plan.txs):
        body: dict[str, Any] = {
            "chainId": chain_id,
            "nonce": nonce0 + i,
            "gas": tx.gas,
            "data": tx.data,
            "value": 0,
            **fees,
        }
        if tx.to is not None:
            body["to"] = tx.to
        raw = acct.sign_transaction(body).raw_transaction
        try:
            hashes.append(bytes(w3.eth.send_raw_transaction(raw)))
        except Exception as exc:  # noqa: BLE001
            raise KeeperError(f"sending {tx.label} failed: {describe_rpc_error(exc)}") from None

    first_block: int | None = None
    for tx, h in zip(plan.txs, hashes, strict=True):
        try:
            rcpt = w3.eth.wait_for_transaction_receipt(
                HexBytes(h), timeout=receipt_timeout, poll_latency=0.05
            )
        except Exception as exc:  # noqa: BLE001
            raise KeeperError(f"no receipt for {tx.label} ({h.hex()}): {describe_rpc_error(exc)}") from None
        if rcpt["status"] != 1:
            raise KeeperError(f"deployment transaction {tx.label} reverted (tx 0x{h.hex()})")
        if first_block is None:
            first_block = int(rcpt["blockNumber"])
    assert first_block is not None
    say(f"deployed in {time.monotonic() - t0:.2f} s from block {first_block}")

    return Deployment(
        chain_id=chain_id,
        deployment_block=first_block,
        contracts={
            "MockUSDC": usdc,
            "OracleHub": oracle,
            "LiquidityVault": vault,
            "InsuranceFund": fund,
            "Exchange": exchange,
        },
        markets=[
            Market(id=i, symbol=spec.symbol, primary=p, secondary=s) for i, (spec, p, s) in enumerate(feeds)
        ],
    )
