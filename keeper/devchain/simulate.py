"""A seeded, reproducible market on an anvil dev chain: traders, tiers, positions and price paths.

How it stays fast with thousands of traders: traders are impersonated (``anvil_autoImpersonateAccount``,
measured ~20x faster than signing each transaction with eth_account: 0.14 ms vs 3.1 ms a tx), automine
is switched off while a step's transactions are sent in JSON-RPC batches, then the step is mined with
``evm_mine`` (the block gas limit is raised for the run so a step fits in one or a few blocks) and its
receipts are read per block. Block timestamps are set explicitly (``evm_setNextBlockTimestamp``), so
the same seed on a fresh chain gives the same state to the wei (positions, collateral, prices, EMA).
Automine, the gas limit and impersonation are restored on exit, Ctrl-C included.

Each simulated block first sets both feeds of every market (primary from the scenario's path,
secondary within 0.5% of it) and calls ``OracleHub.refresh``, at a higher priority fee so these land
before the traders' orders; traders then act on the chain's state. Orders the contracts reject
(reduce-only during a breaker, a paused market, caps) are mined as reverted and counted, never fatal.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import requests
from eth_abi import decode, encode
from eth_utils import keccak, to_checksum_address
from web3 import Web3

from keeper.chain.connect import describe_rpc_error, require_code, rpc_url
from keeper.chain.deployments import Deployment
from keeper.devchain import scenarios as sc
from keeper.errors import KeeperError

USDC = 10**6
WAD = 10**18
FEED_SCALE = 10**8
GWEI = 10**9
TIER_NAMES = ("novice", "junior", "senior", "professional")
ROLE_GRANTED = "0x" + keccak(text="RoleGranted(bytes32,address,address)").hex()
RISK_ADMIN_ROLE = "0x" + keccak(text="RISK_ADMIN_ROLE").hex()
MAX_UINT = 2**256 - 1
BIG_GAS_LIMIT = 1_000_000_000  # block gas limit while simulating: a step fits in a few blocks

# Gas limit per transaction kind (used gas is ~1/2 of these; only used gas is paid).
GAS = {
    "faucet": 120_000,
    "approve": 80_000,
    "deposit": 160_000,
    "education": 80_000,
    "certify": 80_000,
    "feed": 80_000,
    "refresh": 200_000,
    "trade": 800_000,
}


def _sel(signature: str) -> bytes:
    return keccak(text=signature)[:4]


SEL = {
    name: _sel(sig)
    for name, sig in {
        "faucet": "faucet(address,uint256)",
        "approve": "approve(address,uint256)",
        "deposit": "deposit(uint256)",
        "trade": "trade(uint256,int256,uint256,uint256)",
        "setEducation": "setEducation(address,bool)",
        "setCertified": "setCertified(address,bool)",
        "setAnswer": "setAnswer(int256)",
        "refresh": "refresh(uint256)",
        "positionOf": "positionOf(address,uint256)",
        "collateralOf": "collateralOf(address)",
        "tierOf": "tierOf(address)",
        "tradeCount": "tradeCount(address)",
        "accountValue": "accountValue(address)",
        "isLiquidatable": "isLiquidatable(address)",
        "tierLimits": "tierLimits(uint8)",
        "latestRoundData": "latestRoundData()",
        "tryMarkPrice": "tryMarkPrice(uint256)",
        "status": "status(uint256)",
        "totalAssets": "totalAssets()",
        "balance": "balance()",
        "hasRole": "hasRole(bytes32,address)",
        "owner": "owner()",
    }.items()
}


def calldata(fn: str, types: Sequence[str] = (), args: Sequence[Any] = ()) -> str:
    return "0x" + (SEL[fn] + (encode(list(types), list(args)) if types else b"")).hex()


class RpcError(Exception):
    pass


class Rpc:
    """Bare JSON-RPC over HTTP with batching (web3.py's formatters are too slow for 10^5 calls)."""

    def __init__(self, url: str, timeout: float = 60.0, chunk: int = 1_000) -> None:
        self.url = url
        self.timeout = timeout
        self.chunk = chunk
        self.session = requests.Session()
        self.session.headers["Content-Type"] = "application/json"

    def _post(self, payload: Any) -> Any:
        try:
            resp = self.session.post(self.url, data=orjson.dumps(payload), timeout=self.timeout)
            resp.raise_for_status()
        except requests.RequestException as exc:
            raise KeeperError(
                f"cannot reach RPC {self.url}: {describe_rpc_error(exc, self.timeout)}"
            ) from None
        return orjson.loads(resp.content)

    def call(self, method: str, *params: Any) -> Any:
        reply = self._post({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        if "error" in reply:
            raise RpcError(f"{method}: {reply['error'].get('message', reply['error'])}")
        return reply["result"]

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[tuple[bool, Any]]:
        """[(ok, result-or-error)] in the order of ``calls``."""
        out: list[tuple[bool, Any]] = []
        for start in range(0, len(calls), self.chunk):
            part = calls[start : start + self.chunk]
            payload = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(part)]
            replies = self._post(payload)
            if isinstance(replies, dict):  # a node that refuses batches answers with one error
                raise RpcError(f"batch refused: {replies.get('error')}")
            by_id = {r.get("id"): r for r in replies}
            for i in range(len(part)):
                r = by_id.get(i, {"error": {"message": "no reply"}})
                out.append((False, r["error"]) if "error" in r else (True, r["result"]))
        return out

    def eth_calls(self, calls: Sequence[tuple[str, str]], block: str = "latest") -> list[bytes | None]:
        """Batched eth_call of (to, data); None where the call reverted."""
        res = self.batch([("eth_call", [{"to": to, "data": data}, block]) for to, data in calls])
        return [bytes.fromhex(r[2:]) if ok else None for ok, r in res]


# ---------------------------------------------------------------------------------------- traders


@dataclass(frozen=True)
class Profile:
    """What a trader is meant to be: fixed by (seed, index)."""

    index: int
    address: str
    tier: int  # target tier: 0 novice .. 3 professional
    educated: bool
    collateral: int  # USDC units deposited at setup
    leverage: int  # preferred leverage (≤ the target tier's max)
    warmup_trades: int  # small open/close trades to climb to the target tier
    markets: tuple[int, ...]
    longs: tuple[bool, ...]
    usage: float  # share of collateral·leverage used by the opening positions


def trader_address(seed: int, index: int) -> str:
    """Deterministic trader address: the last 20 bytes of keccak("zanbara-sim", seed, index)."""
    digest = keccak(b"zanbara-sim" + seed.to_bytes(32, "big", signed=True) + index.to_bytes(32, "big"))
    return to_checksum_address(digest[12:])


def make_profiles(seed: int, count: int, n_markets: int, max_leverage: Sequence[int]) -> list[Profile]:
    rng = random.Random(f"zanbara-sim/profiles/{seed}")
    profiles = []
    for i in range(count):
        r = rng.random()
        tier = 0 if r < 0.45 else 1 if r < 0.68 else 2 if r < 0.85 else 3
        educated = tier != 0 or rng.random() < 0.9  # ~5% of all traders never complete education
        lo, hi = {0: (500, 1_500), 1: (1_000, 4_000), 2: (2_000, 5_000), 3: (2_000, 5_000)}[tier]
        collateral = rng.randint(lo, hi) * USDC
        top = max_leverage[tier]
        leverage = top if rng.random() < 0.45 else rng.randint(1, top)
        warmup = {0: 0, 1: rng.randint(5, 8), 2: rng.randint(20, 23), 3: rng.choice((0, 0, 2))}[tier]
        k = 1 if rng.random() < 0.5 else 2 if rng.random() < 0.6 else 3
        markets = tuple(sorted(rng.sample(range(n_markets), min(k, n_markets))))
        longs = tuple(rng.random() < 0.65 for _ in markets)
        usage = rng.uniform(0.85, 0.92) if leverage == top else rng.uniform(0.4, 0.9)
        profiles.append(
            Profile(
                i,
                trader_address(seed, i),
                tier,
                educated,
                collateral,
                leverage,
                warmup,
                markets,
                longs,
                usage,
            )
        )
    return profiles


# ---------------------------------------------------------------------------------------- results


@dataclass
class SimResult:
    scenario: str
    seed: int
    traders: int
    new_traders: int = 0
    blocks: int = 0  # simulated (scenario) blocks
    mined_blocks: int = 0  # chain blocks mined, setup included
    txs_sent: int = 0
    txs_reverted: Counter[str] = field(default_factory=Counter)
    txs_rejected: int = 0  # refused by the node at submission
    txs_dropped: int = 0  # accepted but never mined (dropped from a stuck pool)
    positions_open: dict[str, int] = field(default_factory=dict)
    accounts_with_positions: int = 0
    liquidatable: int = 0
    tiers: dict[str, int] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)  # primary feed answers, USD
    marks: dict[str, float | None] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    vault_assets: int = 0
    fund_balance: int = 0
    first_block: int = 0
    last_block: int = 0
    seconds: float = 0.0

    @property
    def reverts(self) -> int:
        return sum(self.txs_reverted.values())


@dataclass
class _Tx:
    kind: str
    sender: str
    to: str
    data: str
    priority: int = 1  # gwei tip: oracle updates 3, admin 2, traders 1


@dataclass
class _Account:
    sizes: list[int]
    collateral: int
    value: int | None  # None: an oracle the account depends on is down
    tier: int


# ---------------------------------------------------------------------------------------- simulator


class Simulator:
    def __init__(
        self,
        w3: Web3,
        deployment: Deployment,
        *,
        seed: int = 1,
        traders: int = 200,
        risk_admin: str | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.w3 = w3
        self.dep = deployment
        self.seed = seed
        self.n_traders = traders
        self.log = log or (lambda _m: None)
        self.rpc = Rpc(rpc_url(w3))
        self.exchange = deployment.address("Exchange")
        self.oracle = deployment.address("OracleHub")
        self.vault = deployment.address("LiquidityVault")
        self.fund = deployment.address("InsuranceFund")
        self.usdc = deployment.collateral
        self.markets = sorted(deployment.markets, key=lambda m: m.id)
        self.n_markets = len(self.markets)
        self._risk_admin_hint = risk_admin
        self.chunk = 1_000  # transactions per submission round (see _step)
        self.result: SimResult | None = None
        self._ts = 0
        self._saved: dict[str, Any] = {}

    # ------------------------------------------------------------------ chain control

    def _check_chain(self) -> None:
        try:
            client = str(self.rpc.call("web3_clientVersion"))
            chain_id = int(self.rpc.call("eth_chainId"), 16)
        except RpcError as exc:
            raise KeeperError(f"RPC {self.rpc.url} failed: {exc}") from None
        if chain_id != self.dep.chain_id:
            raise KeeperError(
                f"RPC {self.rpc.url} serves chain {chain_id}, "
                f"but the deployments file is for chain {self.dep.chain_id}"
            )
        if "anvil" not in client.lower():
            raise KeeperError(f"simulate needs an anvil dev chain; {self.rpc.url} is {client}")
        for name in ("Exchange", "OracleHub", "LiquidityVault", "InsuranceFund"):
            require_code(self.w3, self.dep.address(name), name)
        if not self.markets:
            raise KeeperError("the deployments file lists no markets")

    def _enter(self) -> None:
        latest = self.rpc.call("eth_getBlockByNumber", "latest", False)
        self._saved = {
            "automine": bool(self.rpc.call("anvil_getAutomine")),
            "gas_limit": int(latest["gasLimit"], 16),
        }
        self._ts = int(latest["timestamp"], 16)
        self.rpc.call("evm_setAutomine", False)
        self.rpc.call("anvil_autoImpersonateAccount", True)
        self.rpc.call("evm_setBlockGasLimit", hex(max(BIG_GAS_LIMIT, self._saved["gas_limit"])))
        # The feed owner and the risk admin send through impersonation: make sure they can pay gas.
        for who in (self.feeder, self.risk_admin):
            if int(self.rpc.call("eth_getBalance", who, "latest"), 16) < 10 * WAD:
                self.rpc.call("anvil_setBalance", who, hex(100 * WAD))

    def _exit(self) -> None:
        if not self._saved:
            return
        # Auto-impersonation stays on: anvil has no getter for it, and turning it off would break another
        # simulator running on the same dev chain (make run's calm market while a crash is simulated).
        for method, arg in (
            ("evm_setBlockGasLimit", hex(self._saved["gas_limit"])),
            ("evm_setAutomine", self._saved["automine"]),
        ):
            with contextlib.suppress(RpcError, KeeperError):
                self.rpc.call(method, arg)
        self._saved = {}

    def _send(self, txs: Sequence[_Tx]) -> list[tuple[str, str] | None]:
        """Submits; returns (hash, kind) per tx, None where the node refused it."""
        # Nonces are explicit: anvil serves a batch's calls concurrently, so letting it pick nonces
        # gives two transactions of one sender the same nonce. The pool is empty between steps, so the
        # pending count is where each sender's nonces start.
        senders = list(dict.fromkeys(tx.sender for tx in txs))
        counts = self.rpc.batch([("eth_getTransactionCount", [a, "pending"]) for a in senders])
        nonce = {a: int(n, 16) if ok else 0 for a, (ok, n) in zip(senders, counts, strict=True)}
        calls = []
        for tx in txs:
            body = {
                "nonce": hex(nonce[tx.sender]),
                "from": tx.sender,
                "to": tx.to,
                "data": tx.data,
                "gas": hex(GAS[tx.kind]),
                "maxFeePerGas": hex(100 * GWEI),
                "maxPriorityFeePerGas": hex(tx.priority * GWEI),
            }
            nonce[tx.sender] += 1
            calls.append(("eth_sendTransaction", [body]))
        out: list[tuple[str, str] | None] = []
        assert self.result is not None
        for (ok, res), tx in zip(self.rpc.batch(calls), txs, strict=True):
            if ok:
                out.append((res, tx.kind))
            else:
                out.append(None)
                self.result.txs_rejected += 1
                if self.result.txs_rejected <= 3:
                    self.log(f"node refused a {tx.kind} from {tx.sender}: {res.get('message', res)}")
        self.result.txs_sent += len(txs)
        return out

    def _mine(self, dt: int) -> list[int]:
        """Mines until the pool is empty; each block ``dt`` s after the previous. Returns block numbers."""
        blocks = []
        last_pending = None
        step = dt
        while True:
            self._ts += step
            step = 1  # overflow blocks of the same step follow one second apart
            try:
                self.rpc.call("anvil_setNextBlockBaseFeePerGas", hex(GWEI))
                self.rpc.call("evm_setNextBlockTimestamp", self._ts)
            except RpcError:
                pass  # e.g. an interval-mining node moved past it: let the node choose
            self.rpc.call("evm_mine")
            blocks.append(int(self.rpc.call("eth_blockNumber"), 16))
            status = self.rpc.call("txpool_status")
            pending = int(status["pending"], 16)
            if pending == 0:
                break
            if pending == last_pending:  # stuck (e.g. a nonce gap): drop what cannot be mined
                self.rpc.call("anvil_dropAllTransactions")
                break
            last_pending = pending
        assert self.result is not None
        self.result.mined_blocks += len(blocks)
        return blocks

    def _step(self, txs: Sequence[_Tx], dt: int) -> None:
        """Sends ``txs``, mines them, and counts reverted ones by kind.

        Receipts are not read: anvil builds each receipt of a block in time proportional to the block
        (measured 2 ms a receipt in a 4,000-transaction block). Every transaction kind sent here emits
        an event when it succeeds, so the mined transactions without a log are the reverted ones
        (``refresh`` excepted: on a stale feed it returns without an event, and is not counted).
        """
        assert self.result is not None
        sent: list[tuple[str, str] | None] = []
        blocks: list[int] = []
        # anvil's pool slows down as it fills (0.14 ms a submission when small, 0.8 ms at 10^4
        # pending): a big step goes out in chunks, each mined before the next is sent.
        for start in range(0, max(len(txs), 1), self.chunk):
            sent += self._send(txs[start : start + self.chunk])
            blocks += self._mine(dt if start == 0 else 1)
        kinds = {h: k for h, k in (s for s in sent if s is not None)}
        mined: list[str] = []
        for ok, blk in self.rpc.batch([("eth_getBlockByNumber", [hex(b), False]) for b in blocks]):
            if ok and blk:
                mined += blk["transactions"]
        logs = self.rpc.call("eth_getLogs", {"fromBlock": hex(blocks[0]), "toBlock": hex(blocks[-1])})
        succeeded = {lg["transactionHash"] for lg in logs}
        for h in mined:
            kind = kinds.get(h)
            if kind is not None and kind != "refresh" and h not in succeeded:
                self.result.txs_reverted[kind] += 1
        self.result.txs_dropped += sum(1 for h in kinds if h not in set(mined))

    # ------------------------------------------------------------------ reads

    def _find_risk_admin(self) -> str:
        candidates: list[str] = []
        if self._risk_admin_hint:
            candidates.append(to_checksum_address(self._risk_admin_hint))
        try:
            logs = self.rpc.call(
                "eth_getLogs",
                {
                    "address": self.exchange,
                    "fromBlock": hex(self.dep.deployment_block),
                    "toBlock": "latest",
                    "topics": [ROLE_GRANTED, RISK_ADMIN_ROLE],
                },
            )
            candidates += [to_checksum_address("0x" + lg["topics"][2][-40:]) for lg in reversed(logs)]
        except RpcError:
            pass
        for who in candidates:
            data = calldata("hasRole", ("bytes32", "address"), (bytes.fromhex(RISK_ADMIN_ROLE[2:]), who))
            got = self.rpc.eth_calls([(self.exchange, data)])[0]
            if got is not None and decode(["bool"], got)[0]:
                return who
        raise KeeperError(f"no account holds RISK_ADMIN_ROLE on the Exchange at {self.exchange}")

    def _read_feeds(self) -> list[float]:
        res = self.rpc.eth_calls([(m.primary, calldata("latestRoundData")) for m in self.markets])
        prices = []
        for m, r in zip(self.markets, res, strict=True):
            if r is None:
                raise KeeperError(f"cannot read the {m.symbol} primary feed at {m.primary}")
            prices.append(decode(["uint80", "int256", "uint256", "uint256", "uint80"], r)[1] / FEED_SCALE)
        return prices

    def _read_accounts(self, addresses: Sequence[str]) -> list[_Account]:
        calls: list[tuple[str, str]] = []
        for a in addresses:
            for m in self.markets:
                calls.append((self.exchange, calldata("positionOf", ("address", "uint256"), (a, m.id))))
            calls.append((self.exchange, calldata("collateralOf", ("address",), (a,))))
            calls.append((self.exchange, calldata("accountValue", ("address",), (a,))))
            calls.append((self.exchange, calldata("tierOf", ("address",), (a,))))
        res = self.rpc.eth_calls(calls)
        per = self.n_markets + 3
        out = []
        for i in range(len(addresses)):
            chunk = res[i * per : (i + 1) * per]
            sizes = [
                decode(["int256", "uint256", "int256"], c)[0] if c else 0 for c in chunk[: self.n_markets]
            ]
            coll = decode(["int256"], chunk[-3])[0] if chunk[-3] else 0
            value = decode(["int256"], chunk[-2])[0] if chunk[-2] else None
            tier = decode(["uint8"], chunk[-1])[0] if chunk[-1] else 0
            out.append(_Account(sizes, coll, value, tier))
        return out

    # ------------------------------------------------------------------ transactions

    def _oracle_txs(
        self, prices: Sequence[float], rng: random.Random, frozen: Iterable[int] = ()
    ) -> list[_Tx]:
        """Both feeds of every market (primary at ``prices``, secondary within 0.5%), then refreshes."""
        skip = set(frozen)
        txs = []
        for m, p in zip(self.markets, prices, strict=True):
            noise = rng.uniform(-0.004, 0.004)
            if m.id not in skip:
                txs.append(self._feed_tx(m.primary, p))
            txs.append(self._feed_tx(m.secondary, p * (1 + noise)))
        for m in self.markets:
            txs.append(
                _Tx("refresh", self.feeder, self.oracle, calldata("refresh", ("uint256",), (m.id,)), 3)
            )
        return txs

    def _feed_tx(self, feed: str, price: float) -> _Tx:
        return _Tx(
            "feed", self.feeder, feed, calldata("setAnswer", ("int256",), (round(price * FEED_SCALE),)), 3
        )

    def _trade(self, who: str, market: int, size: int, leverage: int) -> _Tx:
        data = calldata(
            "trade", ("uint256", "int256", "uint256", "uint256"), (market, size, max(leverage, 1), 0)
        )
        return _Tx("trade", who, self.exchange, data)

    def _deposit(self, who: str, amount: int) -> list[_Tx]:
        return [
            _Tx("faucet", who, self.usdc, calldata("faucet", ("address", "uint256"), (who, amount))),
            _Tx("deposit", who, self.exchange, calldata("deposit", ("uint256",), (amount,))),
        ]

    # ------------------------------------------------------------------ phases

    def _setup(self, profiles: Sequence[Profile], prices: list[float], rng: random.Random) -> None:
        assert self.result is not None
        res = self.rpc.batch([("eth_getTransactionCount", [p.address, "latest"]) for p in profiles])
        fresh = [p for p, (ok, n) in zip(profiles, res, strict=True) if ok and int(n, 16) == 0]
        self.result.new_traders = len(fresh)
        # Feeds are refreshed even when nobody is new: an idle chain's answers may be past the heartbeat.
        if not fresh:
            self._step(self._oracle_txs(prices, rng), 1)
            return
        t0 = time.monotonic()
        self.rpc.batch([("anvil_setBalance", [p.address, hex(100 * WAD)]) for p in fresh])
        # 1. collateral and permissions
        txs = self._oracle_txs(prices, rng)
        for p in fresh:
            txs.append(
                _Tx(
                    "faucet",
                    p.address,
                    self.usdc,
                    calldata("faucet", ("address", "uint256"), (p.address, p.collateral)),
                )
            )
            txs.append(
                _Tx(
                    "approve",
                    p.address,
                    self.usdc,
                    calldata("approve", ("address", "uint256"), (self.exchange, MAX_UINT)),
                )
            )
            txs.append(
                _Tx("deposit", p.address, self.exchange, calldata("deposit", ("uint256",), (p.collateral,)))
            )
            if p.educated:
                data = calldata("setEducation", ("address", "bool"), (p.address, True))
                txs.append(_Tx("education", self.risk_admin, self.exchange, data, 2))
            if p.tier == 3:
                data = calldata("setCertified", ("address", "bool"), (p.address, True))
                txs.append(_Tx("certify", self.risk_admin, self.exchange, data, 2))
        self._step(txs, 1)
        # 2. warm-up: small open/close round trips that lift juniors and seniors to their tier
        txs = self._oracle_txs(prices, rng)
        for p in fresh:
            if not p.educated and p.tier == 0:
                txs.append(self._trade(p.address, p.markets[0], self._size(prices[p.markets[0]], 100), 1))
                continue  # reverts: EducationRequired (an uneducated novice trying)
            for k in range(p.warmup_trades):
                m = p.markets[k % len(p.markets)]
                size = self._size(prices[m], 100)
                txs.append(self._trade(p.address, m, size if k % 2 == 0 else -size, 1))
            if p.warmup_trades % 2 == 1:  # odd count: the last one opened, close it
                m = p.markets[(p.warmup_trades - 1) % len(p.markets)]
                txs.append(self._trade(p.address, m, -self._size(prices[m], 100), 1))
        self._step(txs, 1)
        # 3. the opening positions, across markets, long and short, up to the tier's leverage
        txs = self._oracle_txs(prices, rng)
        for p in fresh:
            if not p.educated:
                continue
            budget = p.collateral * p.leverage * p.usage
            share = budget / len(p.markets)
            max_order = self.max_order[p.tier]
            for m, long in zip(p.markets, p.longs, strict=True):
                left = share
                while left > 10 * USDC:
                    notional = min(left, max_order * 0.98)
                    size = self._size(prices[m], notional / USDC)
                    txs.append(self._trade(p.address, m, size if long else -size, p.leverage))
                    left -= notional
        self._step(txs, 1)
        self.log(
            f"setup: {len(fresh)} new traders funded ({sum(p.educated for p in fresh)} educated, "
            f"{sum(p.tier == 3 for p in fresh)} certified) in {time.monotonic() - t0:.1f} s"
        )

    @staticmethod
    def _size(price: float, usd: float) -> int:
        """Base units (1e18) worth ``usd`` at ``price``, rounded to 1e-9 so sizes stay readable."""
        return int(usd / price * 1e9) * 10**9

    def _activity(
        self,
        block: int,
        scenario: sc.Scenario,
        profiles: Sequence[Profile],
        prices: list[float],
        rng: random.Random,
    ) -> list[_Tx]:
        n = max(1, round(len(profiles) * scenario.activity))
        chosen = sorted(rng.sample(range(len(profiles)), min(n, len(profiles))))
        accounts = self._read_accounts([profiles[i].address for i in chosen])
        txs: list[_Tx] = []
        for i, acct in zip(chosen, accounts, strict=True):
            p = profiles[i]
            held = [m for m in range(self.n_markets) if acct.sizes[m] != 0]
            r = rng.random()
            if r < scenario.open_weight(block) and p.educated:
                m = rng.choice(p.markets) if rng.random() < 0.8 else rng.randrange(self.n_markets)
                long = (
                    (acct.sizes[m] > 0) if acct.sizes[m] != 0 and rng.random() < 0.7 else rng.random() < 0.55
                )
                lev = min(p.leverage, self.max_leverage[acct.tier])
                notional = sum(abs(acct.sizes[k]) * prices[k] / WAD for k in range(self.n_markets)) * USDC
                value = acct.value if acct.value is not None else 0
                head = min(self.max_order[acct.tier] * 0.98, 100_000 * USDC * 0.97 - notional,
                           value * lev * 0.9 - notional)  # fmt: skip
                if head > 20 * USDC:
                    size = self._size(prices[m], head * rng.uniform(0.2, 1.0) / USDC)
                    txs.append(self._trade(p.address, m, size if long else -size, lev))
                    continue
                r = 1.0  # no headroom: deposit instead
            if r < 0.85 and held:
                m = rng.choice(held)
                frac = 1.0 if rng.random() < 0.5 else rng.uniform(0.25, 0.75)
                size = acct.sizes[m]
                cut = size if frac == 1.0 else int(size * frac) // 10**9 * 10**9
                if cut != 0:
                    txs.append(
                        self._trade(p.address, m, -cut, max(1, min(p.leverage, self.max_leverage[acct.tier])))
                    )
                continue
            txs.extend(self._deposit(p.address, rng.randint(200, 2_000) * USDC))
        return txs

    # ------------------------------------------------------------------ run

    def run(
        self,
        scenario_name: str,
        blocks: int | None = None,
        forever: bool = False,
        interval: float = 1.0,
        pause_file: Path | None = None,
    ) -> SimResult:
        scenario = sc.get("calm" if forever else scenario_name)
        self._check_chain()
        n_blocks = blocks if blocks is not None else scenario.default_blocks
        if n_blocks < 0:
            raise KeeperError("--blocks must be zero or more")
        t0 = time.monotonic()
        self.result = result = SimResult(
            scenario.name if not forever else "calm (forever)", self.seed, self.n_traders
        )
        self.risk_admin = self._find_risk_admin()
        feed_owners = self.rpc.eth_calls([(self.markets[0].primary, calldata("owner"))])
        if feed_owners[0] is None:
            raise KeeperError(
                f"the {self.markets[0].symbol} feed at {self.markets[0].primary} is not a MockAggregator"
            )
        self.feeder = to_checksum_address(decode(["address"], feed_owners[0])[0])
        limits = self.rpc.eth_calls(
            [(self.exchange, calldata("tierLimits", ("uint8",), (t,))) for t in range(4)]
        )
        tl = [decode(["uint256", "uint256"], r) if r else (1, 0) for r in limits]
        self.max_leverage = [int(x[0]) for x in tl]
        self.max_order = [int(x[1]) for x in tl]
        profiles = make_profiles(self.seed, self.n_traders, self.n_markets, self.max_leverage)
        prices = self._read_feeds()
        result.first_block = int(self.rpc.call("eth_blockNumber"), 16) + 1
        self.log(
            f"simulate {result.scenario}: {self.n_traders} traders (seed {self.seed}) "
            f"on chain {self.dep.chain_id}, "
            f"from block {result.first_block}"
        )
        rng = random.Random(f"zanbara-sim/{self.seed}/{scenario.name}")
        previous_term = _term_as_interrupt()
        self._enter()
        try:
            self._setup(profiles, prices, rng)
            block = 0
            block_time = 60 if forever else scenario.block_time
            while forever or block < n_blocks:
                moves = scenario.multipliers(block, self.n_markets, rng)
                prices = [p * k for p, k in zip(prices, moves, strict=True)]
                frozen = [m for m in range(self.n_markets) if scenario.frozen(block, m)]
                txs = self._oracle_txs(prices, rng, frozen)
                txs += self._activity(block, scenario, profiles, prices, rng)
                self._step(txs, block_time + scenario.extra_time(block))
                block += 1
                result.blocks = block
                if block == n_blocks or block % 10 == 0:
                    quotes = " ".join(
                        f"{m.symbol} {p:,.2f}" for m, p in zip(self.markets, prices, strict=True)
                    )
                    self.log(f"block {block}{'' if forever else f'/{n_blocks}'}: {quotes}; "
                             f"txs {result.txs_sent:,}, reverted {result.reverts:,}")  # fmt: skip
                if forever:
                    time.sleep(interval)
                    if pause_file is not None and pause_file.exists():
                        prices = self._pause(pause_file)
        except KeyboardInterrupt:
            self.log("interrupted: restoring the chain's mining settings")
        finally:
            self._exit()
            if previous_term is not None:
                signal.signal(signal.SIGTERM, previous_term)
        self._summarise(profiles)
        result.seconds = time.monotonic() - t0
        return result

    def _pause(self, pause_file: Path) -> list[float]:
        """Idles while ``pause_file`` exists (another drill, e.g. crash-day, has the chain), with
        ``<pause_file>.ack`` saying so; then resumes from the chain's prices and time, not its own."""
        ack = pause_file.with_name(pause_file.name + ".ack")
        self.log(f"paused while {pause_file} exists")
        ack.write_text(str(os.getpid()))
        try:
            while pause_file.exists():
                time.sleep(0.2)
        finally:
            ack.unlink(missing_ok=True)
        self._enter()  # the other drill restored the node's mining settings when it finished
        self.log("resumed")
        return self._read_feeds()

    def _summarise(self, profiles: Sequence[Profile]) -> None:
        assert self.result is not None
        r = self.result
        r.last_block = int(self.rpc.call("eth_blockNumber"), 16)
        addrs = [p.address for p in profiles]
        calls: list[tuple[str, str]] = []
        for a in addrs:
            for m in self.markets:
                calls.append((self.exchange, calldata("positionOf", ("address", "uint256"), (a, m.id))))
            calls.append((self.exchange, calldata("isLiquidatable", ("address",), (a,))))
            calls.append((self.exchange, calldata("tierOf", ("address",), (a,))))
        res = self.rpc.eth_calls(calls)
        per = self.n_markets + 2
        opens = Counter[str]()
        tiers = Counter[str]()
        for i in range(len(addrs)):
            chunk = res[i * per : (i + 1) * per]
            any_open = False
            for m, c in zip(self.markets, chunk[: self.n_markets], strict=True):
                if c and decode(["int256", "uint256", "int256"], c)[0] != 0:
                    opens[m.symbol] += 1
                    any_open = True
            r.accounts_with_positions += any_open
            r.liquidatable += bool(chunk[-2] and decode(["bool"], chunk[-2])[0])
            tiers[TIER_NAMES[decode(["uint8"], chunk[-1])[0]] if chunk[-1] else "?"] += 1
        r.positions_open = {m.symbol: opens[m.symbol] for m in self.markets}
        r.tiers = {t: tiers[t] for t in TIER_NAMES if tiers[t]}
        r.prices = dict(zip([m.symbol for m in self.markets], self._read_feeds(), strict=True))
        extra = [(self.oracle, calldata("tryMarkPrice", ("uint256",), (m.id,))) for m in self.markets]
        extra += [(self.oracle, calldata("status", ("uint256",), (m.id,))) for m in self.markets]
        extra += [(self.vault, calldata("totalAssets")), (self.fund, calldata("balance"))]
        got = self.rpc.eth_calls(extra)
        n = self.n_markets
        for k, m in enumerate(self.markets):
            mark_raw, status_raw = got[k], got[n + k]
            ok, mark = decode(["bool", "uint256"], mark_raw) if mark_raw else (False, 0)
            r.marks[m.symbol] = mark / WAD if ok else None
            st = decode(["uint8"], status_raw)[0] if status_raw else 2
            r.statuses[m.symbol] = ("Active", "ReduceOnly", "Paused")[st]
        r.vault_assets = decode(["uint256"], got[-2])[0] if got[-2] else 0
        r.fund_balance = decode(["uint256"], got[-1])[0] if got[-1] else 0


def _term_as_interrupt() -> Any:
    """SIGTERM (e.g. from `make run`'s script) stops a run like Ctrl-C, so the chain's mining
    settings are restored. Returns the previous handler (None when not on the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def simulate(
    w3: Web3,
    deployment: Deployment,
    scenario: str = "calm",
    traders: int = 200,
    seed: int = 1,
    blocks: int | None = None,
    forever: bool = False,
    *,
    risk_admin: str | None = None,
    interval: float = 1.0,
    log: Callable[[str], None] | None = None,
    pause_file: Path | None = None,
) -> SimResult:
    """Runs ``scenario`` with ``traders`` seeded traders; see the module docstring."""
    if traders < 1:
        raise KeeperError("--traders must be at least 1")
    sim = Simulator(w3, deployment, seed=seed, traders=traders, risk_admin=risk_admin, log=log)
    return sim.run(scenario, blocks=blocks, forever=forever, interval=interval, pause_file=pause_file)


def _usd(x: float | None) -> str:
    return "n/a" if x is None else f"${x:,.2f}"


def format_summary(r: SimResult) -> str:
    reverted = ", ".join(f"{k} {v}" for k, v in sorted(r.txs_reverted.items())) or "none"
    lines = [
        f"summary ({r.scenario}, seed {r.seed}): {r.traders} traders ({r.new_traders} new), "
        f"{r.blocks} simulated blocks ({r.mined_blocks} mined, #{r.first_block}-#{r.last_block}) "
        f"in {r.seconds:.1f} s",
        f"  txs sent {r.txs_sent:,}, reverted {r.reverts:,} ({reverted}), "
        f"refused by the node {r.txs_rejected}" + (f", dropped {r.txs_dropped}" if r.txs_dropped else ""),
        f"  positions open: {sum(r.positions_open.values())} ("
        + ", ".join(f"{k} {v}" for k, v in r.positions_open.items())
        + f") in {r.accounts_with_positions} accounts; liquidatable accounts: {r.liquidatable}",
        "  tiers: " + ", ".join(f"{k} {v}" for k, v in r.tiers.items()),
        "  prices: "
        + ", ".join(
            f"{s} ${p:,.2f} (mark {_usd(r.marks.get(s))}, {r.statuses.get(s)})" for s, p in r.prices.items()
        ),
        f"  vault assets ${r.vault_assets / USDC:,.2f}, insurance fund ${r.fund_balance / USDC:,.2f}",
    ]
    return "\n".join(lines)
