"""Shared harness of bench/page_load.py and bench/liquidation.py: the crash scenario under `keeper run`.

One run, on a fresh anvil (``--gas-limit``, default 30M):

1. deploy + ``simulate calm`` (``traders`` traders, ``seed``, 3 blocks), automine as usual (fast);
2. switch the chain to interval mining (``evm_setIntervalMining 1``: one block a second, automine off),
   start ``keeper run`` as a subprocess (env overrides for RPC, deployments file, DB, ports, keys, as
   tests/integration/test_keeper_run.py), wait for ``/api/insurance-fund`` to answer 200;
3. optionally start a side load (``on_ready``), then run the ``crash`` scenario with a *paced* simulator:
   the same seeded transactions as ``simulate crash``, but each step waits for the interval miner to
   include them instead of mining with ``evm_mine`` (so every block is a real 1 s block of ``gas_limit``
   gas, and the keeper competes for it like any other sender);
4. wait until no trader is liquidatable (or a timeout), stop the keeper (SIGTERM);
5. latency: for every ``Liquidated`` event of the keeper's key, the block where the account last became
   liquidatable before it (``isLiquidatable`` at each earlier block, read at that block) and the block
   of the liquidation; blocks = difference, seconds = difference of the wall-clock times at which a
   block watcher (eth_blockNumber every 10 ms) first saw the two blocks.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from eth_abi import decode  # noqa: E402
from eth_account import Account  # noqa: E402
from eth_utils import keccak  # noqa: E402

from keeper.devchain.anvil import DEV_KEYS  # noqa: E402
from keeper.devchain.simulate import Rpc, RpcError, Simulator, calldata, make_profiles  # noqa: E402

#: anvil's public dev accounts 3..5 (as tests/integration/test_keeper_run.py): never real keys.
KEY = DEV_KEYS[3]
FUNDING_KEY = DEV_KEYS[4]
ADL_KEY = DEV_KEYS[5]
LIQUIDATED_TOPIC = (
    "0x"
    + keccak(
        text="Liquidated(address,uint256,(address,int256,uint256,uint256,uint256,uint256,bool,int256,uint256,int256))"
    ).hex()
)
IS_LIQ = keccak(text="isLiquidatable(address)")[:4].hex()


def is_liq_data(address: str) -> str:
    return "0x" + IS_LIQ + "00" * 12 + address[2:].lower()


def pct(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def get(url: str, timeout: float = 5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


class PacedSimulator(Simulator):
    """The seeded simulator, mined by the chain's interval miner instead of ``evm_mine``."""

    def __init__(self, *args: Any, gas_limit: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gas_limit = gas_limit
        self._hashes: list[str] = []
        self._before = 0
        self.step_blocks: list[list[int]] = []

    def _enter(self) -> None:
        super()._enter()  # automine off is a no-op under interval mining; impersonation on
        self.rpc.call("evm_setBlockGasLimit", hex(self.gas_limit))  # keep the realistic block

    def _send(self, txs: Sequence[Any]) -> list[tuple[str, str] | None]:
        self._before = int(self.rpc.call("eth_blockNumber"), 16)
        out = super()._send(txs)
        self._hashes = [h for h, _ in (o for o in out if o is not None)]
        return out

    def _mine(self, dt: int) -> list[int]:
        deadline = time.monotonic() + 60
        last = self._before
        while True:
            time.sleep(0.05)
            got = self.rpc.batch([("eth_getTransactionByHash", [h]) for h in self._hashes])
            nums = [int(r["blockNumber"], 16) for ok, r in got if ok and r and r.get("blockNumber")]
            if len(nums) == len(self._hashes) or time.monotonic() > deadline:
                last = max(nums, default=int(self.rpc.call("eth_blockNumber"), 16))
                break
        blocks = list(range(self._before + 1, max(last, self._before + 1) + 1))
        assert self.result is not None
        self.result.mined_blocks += len(blocks)
        self.step_blocks.append(blocks)
        return blocks


class BlockWatcher(threading.Thread):
    """Wall-clock time at which each block number was first seen (eth_blockNumber every 10 ms)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.rpc = Rpc(url, timeout=5)
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        last = -1
        while not self.stop.is_set():
            try:
                n = int(self.rpc.call("eth_blockNumber"), 16)
            except Exception:  # noqa: BLE001
                n = last
            now = time.monotonic()
            for b in range(last + 1, n + 1):
                self.seen.setdefault(b, now)
            last = max(last, n)
            time.sleep(0.01)


@dataclass
class CrashResult:
    traders: int
    seed: int
    gas_limit: int
    crash_blocks: tuple[int, int] = (0, 0)
    oracle_blocks: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # per Liquidated event of ours
    others: int = 0  # Liquidated events by another sender
    left: int = 0  # traders still liquidatable at the end
    liquidation_gas: int = 0
    liquidation_txs: int = 0
    keeper_log_tail: str = ""
    side: Any = None  # what on_ready's stopper returned
    seconds: dict[str, float] = field(default_factory=dict)
    workdir: Path | None = None

    def lat_blocks(self) -> list[int]:
        return [e["blocks"] for e in self.events]

    def lat_seconds(self) -> list[float]:
        return [e["seconds"] for e in self.events if e["seconds"] is not None]

    def physical_limit_blocks(self) -> float:
        return self.liquidation_gas / self.gas_limit

    def summary(self) -> dict[str, Any]:
        b, s = self.lat_blocks(), self.lat_seconds()
        return {
            "liquidations": len(self.events),
            "left": self.left,
            "others": self.others,
            "p50_blocks": pct(b, 50),
            "p99_blocks": pct(b, 99),
            "max_blocks": max(b, default=float("nan")),
            "mean_blocks": statistics.fmean(b) if b else float("nan"),
            "p50_s": pct(s, 50),
            "p99_s": pct(s, 99),
            "max_s": max(s, default=float("nan")),
            "gas": self.liquidation_gas,
            "txs": self.liquidation_txs,
            "limit_blocks": self.physical_limit_blocks(),
            "from_oracle_block": sum(e["from_oracle_block"] for e in self.events),
        }


def keeper_env(url: str, deployments: Path, db: Path, port: int, metrics_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "KEEPER_CHAIN__RPC_URLS": json.dumps([url]),
        "KEEPER_CHAIN__WS_URL": url.replace("http", "ws"),
        "KEEPER_CHAIN__DEPLOYMENTS_FILE": str(deployments),
        "KEEPER_DATABASE__URL": f"sqlite:///{db}",
        "KEEPER_SERVER__PORT": str(port),
        "KEEPER_METRICS__PORT": str(metrics_port),
        # every loader connection comes from 127.0.0.1: one client for the per-client token bucket
        "KEEPER_SERVER__RATE_LIMIT_PER_SECOND": "1000000000",
        "KEEPER_SERVER__RATE_LIMIT_BURST": "1000000000",
        "KEEPER_LOGGING__FORMAT": "json",
        "KEEPER_LOGGING__LEVEL": "INFO",
        "KEEPER_PRIVATE_KEY": KEY,
        "KEEPER_FUNDING_KEY": FUNDING_KEY,
        "KEEPER_ADL_KEY": ADL_KEY,
    }


def run_crash(
    traders: int,
    seed: int,
    *,
    gas_limit: int = 30_000_000,
    block_time: int = 1,
    on_ready: Callable[[int], Callable[[], Any]] | None = None,
    settle_timeout: float = 120.0,
    log: Callable[[str], None] = print,
) -> CrashResult:
    """See the module docstring. ``on_ready(port)`` starts a side load and returns its stopper."""
    from web3 import Web3

    from keeper.devchain.anvil import DEV_KEYS, Anvil, free_port
    from keeper.devchain.deploy import deploy
    from keeper.devchain.simulate import simulate

    res = CrashResult(traders, seed, gas_limit)
    (REPO / "var" / "bench").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="crash-", dir=REPO / "var" / "bench"))
    res.workdir = tmp
    with Anvil(extra_args=["--gas-limit", str(gas_limit)]) as node:
        t0 = time.monotonic()
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        accts = list(w3.eth.accounts)
        dep = deploy(w3, DEV_KEYS[0], accts[1], accts[2])
        dep_path = dep.save(tmp / "deployments.json")
        simulate(w3, dep, "calm", traders=traders, seed=seed, blocks=3)
        res.seconds["build"] = time.monotonic() - t0
        log(f"  chain built: deploy + calm, {traders:,} traders, {res.seconds['build']:.1f} s")
        rpc = Rpc(node.url, timeout=120)
        rpc.call("evm_setIntervalMining", block_time)
        watcher = BlockWatcher(node.url)
        watcher.start()

        port, metrics_port = free_port(), free_port()
        log_path = tmp / "keeper.log"
        env = keeper_env(node.url, dep_path, tmp / "keeper.db", port, metrics_port)
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "keeper.cli", "run"], cwd=REPO, env=env, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        stopper: Callable[[], Any] | None = None
        try:
            deadline = time.monotonic() + 90
            while get(f"http://127.0.0.1:{port}/api/insurance-fund") != 200:
                if proc.poll() is not None:
                    raise SystemExit("keeper run exited:\n" + log_path.read_text()[-3000:])
                if time.monotonic() > deadline:
                    raise SystemExit("the page never came up:\n" + log_path.read_text()[-3000:])
                time.sleep(0.3)
            time.sleep(3.0)  # the liquidation loop has its book and marks
            if on_ready is not None:
                stopper = on_ready(port)
            first = int(rpc.call("eth_blockNumber"), 16) + 1
            t1 = time.monotonic()
            sim = PacedSimulator(
                w3, dep, seed=seed, traders=traders, gas_limit=gas_limit, log=lambda _m: None
            )
            sim.run("crash")
            res.seconds["crash"] = time.monotonic() - t1
            exchange = dep.address("Exchange")
            addrs = [p.address for p in make_profiles(seed, traders, len(dep.markets), [3, 5, 10, 20])]

            def liquidatable_now() -> list[str]:
                out = rpc.eth_calls([(exchange, is_liq_data(a)) for a in addrs])
                return [
                    a for a, r in zip(addrs, out, strict=True) if r is not None and decode(["bool"], r)[0]
                ]

            deadline = time.monotonic() + settle_timeout
            left = liquidatable_now()
            while left and time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
                left = liquidatable_now()
            res.left = len(left)
            res.seconds["until_clear"] = time.monotonic() - t1
            time.sleep(2 * block_time)
            last = int(rpc.call("eth_blockNumber"), 16)
            res.crash_blocks = (first, last)
            log(
                f"  crash: blocks {first}..{last}, {res.seconds['crash']:.1f} s simulated, clear after "
                f"{res.seconds['until_clear']:.1f} s, {res.left} still liquidatable"
            )
        finally:
            if stopper is not None:
                res.side = stopper()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            watcher.stop.set()
            res.keeper_log_tail = log_path.read_text(errors="replace")[-4000:]
        analyse(res, rpc, dep, watcher.seen)
    return res


def analyse(res: CrashResult, rpc: Rpc, dep: Any, seen: dict[int, float]) -> None:
    first, last = res.crash_blocks
    exchange = dep.address("Exchange")
    me = Account.from_key(KEY).address.lower()
    logs = rpc.call(
        "eth_getLogs",
        {"fromBlock": hex(first), "toBlock": hex(last), "address": exchange, "topics": [LIQUIDATED_TOPIC]},
    )
    oracle_logs = rpc.call(
        "eth_getLogs",
        {"fromBlock": hex(first - 1), "toBlock": hex(last), "address": dep.address("OracleHub")},
    )
    res.oracle_blocks = sorted({int(lg["blockNumber"], 16) for lg in oracle_logs})
    ours = [lg for lg in logs if lg["data"][26:66].lower() == me[2:]]
    res.others = len(logs) - len(ours)
    # isLiquidatable(account) at every block from just before the crash to just before the liquidation
    calls: list[tuple[str, list[Any]]] = []
    spans = []
    previous: dict[str, int] = {}  # a second liquidation of an account counts from the first one
    for lg in sorted(ours, key=lambda g: (int(g["blockNumber"], 16), int(g["logIndex"], 16))):
        acct = "0x" + lg["topics"][1][-40:]
        blk = int(lg["blockNumber"], 16)
        lo = max(first - 1, previous.get(acct, first - 1))
        previous[acct] = blk
        spans.append((acct, blk, lo, len(calls)))
        calls += [("eth_call", [{"to": exchange, "data": is_liq_data(acct)}, hex(b)]) for b in range(lo, blk)]
    answers = rpc.batch(calls)
    for acct, blk, lo, start in spans:
        flags = [
            ok and decode(["bool"], bytes.fromhex(r[2:]))[0] for ok, r in answers[start : start + blk - lo]
        ]
        # the start of the run of liquidatable blocks that ends at blk-1
        k = blk - lo - 1
        if k < 0 or not flags[k]:
            became = None  # not liquidatable at blk-1: became so inside the liquidation block (same block)
        else:
            while k > 0 and flags[k - 1]:
                k -= 1
            became = lo + k
        became = became if became is not None else blk
        t_b, t_l = seen.get(became), seen.get(blk)
        res.events.append(
            {
                "account": acct,
                "block": blk,
                "became": became,
                "blocks": blk - became,
                "seconds": (t_l - t_b) if t_b is not None and t_l is not None else None,
                "from_oracle_block": became in res.oracle_blocks,
                "pre_crash": became == first - 1,
            }
        )
    txs = sorted({lg["transactionHash"] for lg in ours})
    for ok, r in rpc.batch([("eth_getTransactionReceipt", [h]) for h in txs]):
        if ok and r:
            res.liquidation_gas += int(r["gasUsed"], 16)
    res.liquidation_txs = len(txs)


def table_rows(label: str, s: dict[str, Any]) -> str:
    return (
        f"| {label} | {s['liquidations']} | {s['p50_blocks']:.0f} / {s['p99_blocks']:.0f} / {s['max_blocks']:.0f} "
        f"| {s['mean_blocks']:.2f} | {s['p50_s']:.2f} / {s['p99_s']:.2f} / {s['max_s']:.2f} | {s['left']} |"
    )


__all__ = ["CrashResult", "RpcError", "calldata", "pct", "run_crash", "table_rows"]
