"""Crash day: the keeper's worst hour, rehearsed end to end on a throwaway anvil chain.

    keeper simulate --scenario crash-day            # 2,000 traders; report in var/artifacts/crash-day.json

What happens (see :class:`CrashDayConfig` for the figures):

1. a fresh anvil, the full deployment, ``traders`` seeded traders across tiers and markets (the
   simulator's setup: collateral, education, certification, warm-up trades, positions up to each tier's
   leverage);
2. the keeper under test (``keeper run``, as a subprocess) with TWO RPC URLs: a fault proxy first, anvil
   directly second; a competing keeper (``keeper run --no-serve --no-publish``, funding off, another dev
   key, its own database); a load generator (another process) hammering ``/`` and
   ``/api/insurance-fund`` and keeping a sample of the stamped fund figures it was served;
3. the crash, one block every ``block_interval`` wall seconds (automine off, block gas limit 30M so that
   "blocks" are physical): −30% over 10 blocks on every market, the base fee ramping to ×20; the proxy
   answers 429 to half of the calls from the first crash block, drops out (connection refused) for
   ``outage_seconds`` from crash block 2; a 3-block reorg (``anvil_rollback`` + re-mined blocks with the
   same prices, other timestamps) at crash block 5; the keeper SIGKILLed and restarted at crash block 6;
4. blocks keep coming at the bottom price until the proxy is back and nothing is liquidatable;
5. verification against the chain (see :func:`verify`) and a report (:func:`format_report`), saved as
   JSON.

Dev chains only: every key below is one of anvil's public development keys.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi import decode
from eth_account import Account
from eth_utils import keccak, to_checksum_address

from keeper.devchain.anvil import DEV_KEYS, REPO_ROOT, Anvil, free_port
from keeper.devchain.simulate import GWEI, Rpc, calldata, simulate, trader_address
from keeper.errors import KeeperError

#: anvil's public dev accounts: 3 the keeper under test, 4/5 its funding/ADL keys, 6 the competitor.
KEEPER_KEY, FUNDING_KEY, ADL_KEY, RIVAL_KEY = DEV_KEYS[3:7]
KEYS = (KEEPER_KEY, FUNDING_KEY, ADL_KEY, RIVAL_KEY)

FEED_SCALE = 10**8


def _topic(sig: str) -> str:
    return "0x" + keccak(text=sig).hex()


LIQUIDATED = _topic(
    "Liquidated(address,uint256,(address,int256,uint256,uint256,uint256,uint256,bool,int256,uint256,int256))"
)
BAD_DEBT = _topic("BadDebtSettled(address,uint256,uint256,uint256)")
FUND_PAYOUT = _topic("FundPayout(address,address,uint256,uint256,uint256)")
FUND_INCOME = _topic("FundIncome(uint8,address,uint256,uint256)")
DEPOSITED = _topic("Deposited(address,address,uint256,int256)")
LIQ_TYPES = [
    "address",
    "int256",
    "uint256",
    "uint256",
    "uint256",
    "uint256",
    "bool",
    "int256",
    "uint256",
    "int256",
]
#: after the crash, the keeper under test has this long to index the last block (seconds; it takes a few
#: on an idle machine: the margin is for a loaded CI box)
CATCH_UP_SECONDS = 60
LIQUIDATE_BATCH = "0x" + keccak(text="liquidateBatch(address[],uint256[])")[:4].hex()


@dataclass
class CrashDayConfig:
    traders: int = 2_000
    seed: int = 11
    workdir: Path = REPO_ROOT / "var" / "crash-day"
    report_path: Path | None = REPO_ROOT / "var" / "artifacts" / "crash-day.json"
    crash_blocks: int = 10
    drop: float = 0.30
    base_fee_multiplier: int = 20
    block_gas_limit: int = 30_000_000
    block_interval: float = 1.0  # wall seconds between blocks during the crash
    block_time: int = 12  # chain seconds per block
    rate_limit: float = 0.5  # share of the primary RPC's answers that are HTTP 429
    outage_at: int = 2  # crash block at which the primary RPC drops out
    outage_seconds: float = 30.0
    reorg_at: int = 5  # crash block after which the last reorg_depth blocks are replaced
    reorg_depth: int = 3
    kill_at: int = 6  # crash block after which the keeper is SIGKILLed and restarted
    max_tail_blocks: int = 120
    quiet_blocks: int = 3  # blocks with nothing liquidatable and nothing pending before stopping
    load_concurrency: int = 4
    startup_timeout: float = 120.0


@dataclass
class RunningNode:
    """``make run``'s node as a second terminal sees it (from the keeper's settings): its anvil, its
    deployment, its page, its database and log, and the pause file its calm simulator honours."""

    rpc_url: str
    deployments: Path
    page_url: str
    db_url: str
    journal_url: str
    leak_files: list[Path]
    pause_file: Path | None
    risk_admin: str | None = None

    @classmethod
    def from_settings(
        cls, settings: Any, rpc_url: str | None = None, deployments: Path | None = None
    ) -> RunningNode:
        from keeper.chain.deployments import default_path

        db_url = str(settings.database.url)
        files = [REPO_ROOT / "var" / "keeper.log"]
        if db_url.startswith("sqlite:///"):
            db = Path(db_url.removeprefix("sqlite:///"))
            files += [db, db.with_name(db.name + "-wal")]
        risk_admin = None
        if settings.dev.risk_admin_key:
            with contextlib.suppress(Exception):  # an unusable key: the simulator finds the admin itself
                risk_admin = str(Account.from_key(settings.dev.risk_admin_key).address)
        return cls(
            rpc_url=rpc_url or settings.chain.rpc_urls[0],
            deployments=deployments or default_path(settings.chain.deployments_file),
            page_url=f"http://127.0.0.1:{settings.server.port}",
            db_url=db_url,
            journal_url=str(settings.executor.journal_url or db_url),
            leak_files=files,
            pause_file=REPO_ROOT / "var" / "simulate.pause",
            risk_admin=risk_admin,
        )


@dataclass
class Proc:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return p.returncode

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


# ------------------------------------------------------------------------------------------- load


def load_main(argv: Sequence[str]) -> int:
    """The page under load, from another process: GET / and /api/insurance-fund until the stop file
    appears (or ``seconds`` pass); writes latencies, statuses and a sample of stamped fund figures."""
    import argparse
    import threading

    p = argparse.ArgumentParser(prog="crashday load")
    p.add_argument("--base", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stop-file", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--concurrency", type=int, default=4)
    a = p.parse_args(argv)
    deadline = time.monotonic() + a.seconds
    lat: list[float] = []
    statuses: Counter[int] = Counter()
    samples: dict[int, dict[str, Any]] = {}  # block number -> last fund figures seen for it
    lock = threading.Lock()

    def worker(k: int) -> None:
        i = 0
        while time.monotonic() < deadline and not a.stop_file.exists():
            path = "/api/insurance-fund" if (i + k) % 3 else "/"
            i += 1
            t0 = time.perf_counter()
            status, body = http_get(a.base + path)
            dt = time.perf_counter() - t0
            fig = None
            if path != "/" and status == 200:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    d = json.loads(body)
                    fig = {"block_number": d["stamp"]["block_number"], "block_hash": d["stamp"]["block_hash"],
                           "balance": int(d["balance"]["raw"])}  # fmt: skip
            with lock:
                statuses[status] += 1
                if status == 200:
                    lat.append(dt)
                if fig is not None:
                    samples[fig["block_number"]] = fig
            if status != 200:
                time.sleep(0.05)  # the page is down (keeper restarting): don't spin

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a.out.write_text(
        json.dumps(
            {
                "latencies": lat,
                "statuses": {str(k): v for k, v in statuses.items()},
                "samples": list(samples.values()),
            }
        )  # fmt: skip
    )
    return 0


# ------------------------------------------------------------------------------------------ the day


@dataclass
class Timeline:
    crash_start_block: int = 0
    crash_end_block: int = 0
    reorg_block: int = 0  # the head when the reorg replaced the last blocks
    kill_block: int = 0
    outage_start_block: int = 0
    recovery_block: int = 0  # first block mined after the primary RPC came back
    last_block: int = 0
    crossing: dict[str, int] = field(default_factory=dict)  # account -> first block liquidatable


class CrashDay:
    def __init__(self, cfg: CrashDayConfig, log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.log = log or (lambda m: print(m, flush=True))
        self.work = Path(cfg.workdir)
        self.tl = Timeline()
        self.procs: dict[str, Proc] = {}
        self.anvil: Anvil | None = None
        self.unplanned: list[str] = []
        #: files checked for key leaks besides the drill's own logs and databases
        self.leak_files: list[Path] = []
        self.page_capture: tuple[int, bytes] = (0, b"")

    # ------------------------------------------------------------------ chain helpers

    def _feeds(self) -> list[tuple[str, str]]:
        return [(m.primary, m.secondary) for m in self.markets]

    def _oracle_block(self, prices: Sequence[float], base_fee: int) -> int:
        """Posts both feeds of every market at ``prices`` and refreshes, then mines one block."""
        rpc = self.rpc
        self.ts += self.cfg.block_time
        rpc.call("anvil_setNextBlockBaseFeePerGas", hex(base_fee))
        rpc.call("evm_setNextBlockTimestamp", self.ts)
        nonce = int(rpc.call("eth_getTransactionCount", self.feeder, "pending"), 16)
        calls = []
        fee = {"maxFeePerGas": hex(base_fee * 3 + 3 * GWEI), "maxPriorityFeePerGas": hex(3 * GWEI)}
        for m, p in zip(self.markets, prices, strict=True):
            for feed in (m.primary, m.secondary):
                data = calldata("setAnswer", ("int256",), (round(p * FEED_SCALE),))
                calls.append({"from": self.feeder, "to": feed, "data": data, "gas": hex(80_000)})
        for m in self.markets:
            calls.append({"from": self.feeder, "to": self.oracle,
                          "data": calldata("refresh", ("uint256",), (m.id,)), "gas": hex(200_000)})  # fmt: skip # noqa: E501
        batch = []
        for c in calls:
            batch.append(("eth_sendTransaction", [{**c, **fee, "nonce": hex(nonce)}]))
            nonce += 1
        for ok, res in rpc.batch(batch):
            if not ok:
                self.log(f"oracle tx refused: {res}")
        rpc.call("evm_mine")
        block = int(rpc.call("eth_blockNumber"), 16)
        self._scan(block)
        return block

    def _liquidatable_at(self, block: int) -> list[str]:
        res = self.rpc.eth_calls(
            [(self.exchange, calldata("isLiquidatable", ("address",), (a,))) for a in self.addrs], hex(block)
        )
        return [a for a, r in zip(self.addrs, res, strict=True) if r is not None and decode(["bool"], r)[0]]

    def _scan(self, block: int) -> None:
        now = self._liquidatable_at(block)
        self.liq_by_block[block] = set(now)
        for a in now:
            self.tl.crossing.setdefault(a, block)

    def _pending(self) -> int:
        return int(self.rpc.call("txpool_status")["pending"], 16)

    # ------------------------------------------------------------------ processes

    def _keeper_env(
        self, db: Path, rpc_urls: list[str], key: str, port: int, metrics: bool
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
        env.update({
            "KEEPER_CHAIN__RPC_URLS": json.dumps(rpc_urls),
            "KEEPER_CHAIN__WS_URL": self.anvil_url.replace("http", "ws"),
            "KEEPER_CHAIN__DEPLOYMENTS_FILE": str(self.dep_path),
            "KEEPER_CHAIN__REQUEST_TIMEOUT": "3",
            "KEEPER_DATABASE__URL": f"sqlite:///{db}",
            # the journal in its own SQLite file: on one file, the indexer's large write transactions
            # held the journal's BEGIN IMMEDIATE past the busy timeout on a loaded 2-core box (the
            # liquidator then died: "database is locked")
            "KEEPER_EXECUTOR__JOURNAL_URL": f"sqlite:///{db.with_suffix('.journal.db')}",
            "KEEPER_DATABASE__BUSY_TIMEOUT_MS": "30000",
            "KEEPER_SERVER__PORT": str(port),
            "KEEPER_SERVER__RATE_LIMIT_PER_SECOND": "100000",
            "KEEPER_SERVER__RATE_LIMIT_BURST": "100000",
            "KEEPER_METRICS__ENABLED": "true" if metrics else "false",
            "KEEPER_METRICS__PORT": str(free_port()),
            "KEEPER_LOGGING__FORMAT": "json",
            "KEEPER_LOGGING__LEVEL": "INFO",
            "KEEPER_INDEXER__POLL_INTERVAL": "0.2",
            "KEEPER_EXECUTOR__POLL_INTERVAL": "0.2",
            "KEEPER_EXECUTOR__REPLACE_AFTER_BLOCKS": "2",
            "KEEPER_PRIVATE_KEY": key,
            "KEEPER_FUNDING_KEY": FUNDING_KEY,
            "KEEPER_ADL_KEY": ADL_KEY,
        })  # fmt: skip
        return env

    def _index_head(self, db: Path) -> int:
        import sqlite3

        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as c:
                row = c.execute("select block_number from checkpoints").fetchone()
                return int(row[0]) if row else -1
        except sqlite3.Error:
            return -1

    def _wait_ready(self, head: int) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout
        while True:
            ok_page = http_get(f"{self.base}/api/insurance-fund")[0] == 200
            ok_a = self._index_head(self.db) >= head
            ok_b = self._index_head(self.rival_db) >= head
            if ok_page and ok_a and ok_b:
                return
            for p in self.procs.values():
                if p.name != "load" and not p.alive():
                    raise RuntimeError(f"{p.name} exited on start:\n{p.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"keepers not ready (page {ok_page}, index {ok_a}/{ok_b}):\n"
                                   f"{self.procs['keeper'].tail()}")  # fmt: skip
            time.sleep(0.3)

    # ------------------------------------------------------------------ run

    def _fresh_workdir(self) -> None:
        """The drill's folder, emptied of the previous run's files (logs, databases)."""
        self.work.mkdir(parents=True, exist_ok=True)
        for old in self.work.glob("*"):
            if old.is_file():
                old.unlink()

    def _save(self, report: dict[str, Any]) -> None:
        if self.cfg.report_path is not None:
            self.cfg.report_path.parent.mkdir(parents=True, exist_ok=True)
            self.cfg.report_path.write_text(json.dumps(report, indent=2, default=str))

    def run(self) -> dict[str, Any]:
        from keeper.chain.connect import connect
        from keeper.devchain.deploy import deploy
        from keeper.indexer.testing import FaultProxy

        cfg = self.cfg
        t_start = time.monotonic()
        self._fresh_workdir()
        self.db, self.rival_db = self.work / "keeper.db", self.work / "rival.db"
        self.db_url = f"sqlite:///{self.db}"
        self.journal_url = f"sqlite:///{self.db.with_suffix('.journal.db')}"
        self.keeper_address = str(Account.from_key(KEEPER_KEY).address)
        with contextlib.ExitStack() as stack:
            self.anvil = anvil = stack.enter_context(Anvil(log_path=self.work / "anvil.log"))
            self.anvil_url = anvil.url
            w3 = connect(anvil.url, 31337)
            risk_admin = Account.from_key(DEV_KEYS[1]).address
            dep = deploy(w3, DEV_KEYS[0], risk_admin, Account.from_key(DEV_KEYS[2]).address)
            self.dep, self.dep_path = dep, dep.save(self.work / "deployments.json")
            self.rpc = Rpc(anvil.url)
            self.exchange, self.oracle = dep.address("Exchange"), dep.address("OracleHub")
            self.fund = dep.address("InsuranceFund")
            self.markets = sorted(dep.markets, key=lambda m: m.id)
            self.addrs = [trader_address(cfg.seed, i) for i in range(cfg.traders)]
            self.liq_by_block: dict[int, set[str]] = {}

            self.log(f"crash day: {cfg.traders} traders (seed {cfg.seed}) on {anvil.url}")
            sim = simulate(w3, dep, "calm", traders=cfg.traders, seed=cfg.seed, blocks=1, risk_admin=risk_admin,  # noqa: E501
                           log=lambda m: self.log(f"  {m}"))  # fmt: skip
            t_setup = time.monotonic() - t_start
            owner = self.rpc.eth_calls([(self.markets[0].primary, calldata("owner"))])[0]
            assert owner is not None
            self.feeder = to_checksum_address(decode(["address"], owner)[0])
            prices = [
                decode(["uint80", "int256", "uint256", "uint256", "uint80"], r)[1] / FEED_SCALE  # type: ignore[arg-type]
                for r in self.rpc.eth_calls([(m.primary, calldata("latestRoundData")) for m in self.markets])
            ]

            # -------- processes: fault proxy, keeper under test, competitor, page load
            proxy = stack.enter_context(FaultProxy(anvil.url, retry_after="0.2", seed=cfg.seed))
            self.proxy = proxy
            port = free_port()
            self.base = f"http://127.0.0.1:{port}"
            cli = [sys.executable, "-m", "keeper.cli", "run"]
            self.procs["keeper"] = Proc(
                "keeper",
                cli,
                self._keeper_env(self.db, [proxy.url, anvil.url], KEEPER_KEY, port, True),
                self.work / "keeper.log",
            )
            rival_env = self._keeper_env(self.rival_db, [anvil.url], RIVAL_KEY, free_port(), False)
            rival_env["KEEPER_FUNDING__ENABLED"] = "false"
            self.procs["rival"] = Proc("rival", [*cli, "--no-serve", "--no-publish", "--no-funding"], rival_env,  # noqa: E501
                                       self.work / "rival.log")  # fmt: skip
            stack.callback(self._stop_all)
            self.procs["keeper"].start()
            self.procs["rival"].start()
            head = int(self.rpc.call("eth_blockNumber"), 16)
            self._wait_ready(head)
            t_ready = time.monotonic() - t_start
            self.log(f"keepers ready at block {head} ({t_ready:.1f} s)")
            stop_file = self.work / "load.stop"
            self._start_load(stop_file)
            fund_before = self._fund_balance("latest")

            # -------- the crash
            blocks_mined = self._crash(prices, proxy)
            t_crash = time.monotonic() - t_start - t_ready
            self.log(f"crash over at block {self.tl.last_block} ({blocks_mined} blocks, {t_crash:.1f} s)")

            # -------- let the keepers index to the head, stop everything, verify
            deadline = time.monotonic() + CATCH_UP_SECONDS
            while (indexed := self._index_head(self.db)) < self.tl.last_block and time.monotonic() < deadline:
                time.sleep(0.2)
            if indexed < self.tl.last_block:  # said plainly, not as a database diff
                self.unplanned.append(f"the keeper's index was at block {indexed}, {CATCH_UP_SECONDS} s "
                                      f"after the crash's last block {self.tl.last_block}")  # fmt: skip
            self._stop_load(stop_file)
            self._capture_page()
            codes = {name: p.stop() for name, p in self.procs.items()}
            # automine stays off until verified: on, it would mine what the keepers left in the pool
            # (e.g. a funding settlement) into a block after the last one they indexed
            report = self.verify(fund_before, codes, {**proxy.counts, "answered": proxy.served})
            self.rpc.call("evm_setAutomine", True)
            report["setup"] = {"traders": cfg.traders, "seed": cfg.seed, "positions_open": sum(sim.positions_open.values()),  # noqa: E501
                               "tiers": sim.tiers, "setup_seconds": round(t_setup, 1),
                               "block_interval_seconds": cfg.block_interval}  # fmt: skip
            report["seconds"] = {"setup": round(t_setup, 1), "ready": round(t_ready, 1),
                                 "crash": round(t_crash, 1), "total": round(time.monotonic() - t_start, 1)}  # fmt: skip # noqa: E501
        self._save(report)
        return report

    def _crash(self, prices: Sequence[float], proxy: Any | None) -> int:
        """The crash and its tail, one block every ``block_interval`` s; returns the blocks mined. With
        ``proxy`` None (against a running node) there are no RPC faults and no SIGKILL: the keeper is
        not ours, and the "recovery" is the crash's first block."""
        cfg = self.cfg
        latest = self.rpc.call("eth_getBlockByNumber", "latest", False)
        self.ts = int(latest["timestamp"], 16)
        base_fee0 = max(GWEI, int(latest.get("baseFeePerGas", "0x0"), 16))
        self.rpc.call("evm_setAutomine", False)
        self.rpc.call("evm_setBlockGasLimit", hex(cfg.block_gas_limit))
        step = (1.0 - cfg.drop) ** (1.0 / cfg.crash_blocks)
        path: list[list[float]] = []
        fees: list[int] = []
        for i in range(cfg.crash_blocks):
            path.append([p * step ** (i + 1) for p in prices])
            fees.append(int(base_fee0 * cfg.base_fee_multiplier ** ((i + 1) / cfg.crash_blocks)))
        bottom, top_fee = path[-1], fees[-1]
        outage_until: float | None = None
        recovered = proxy is None
        next_at = time.monotonic()
        blocks_mined = 0
        quiet = 0
        i = 0
        while True:
            crash = i < cfg.crash_blocks
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = time.monotonic() + cfg.block_interval
            if i == 0:
                faults = "no RPC faults (the keeper's RPC is its own)" if proxy is None else (
                    f"primary RPC answering 429 to {cfg.rate_limit:.0%}")  # fmt: skip
                if proxy is not None:
                    proxy.rate_limit = cfg.rate_limit
                self.log(f"crash: −{cfg.drop:.0%} over {cfg.crash_blocks} blocks, base fee to ×"
                         f"{cfg.base_fee_multiplier}, {faults}")  # fmt: skip
            block = self._oracle_block(path[i] if crash else bottom, fees[i] if crash else top_fee)
            blocks_mined += 1
            if i == 0:
                self.tl.crash_start_block = block
                if proxy is None:
                    self.tl.recovery_block = block
            if i == cfg.crash_blocks - 1:
                self.tl.crash_end_block = block
            if proxy is not None and i == cfg.outage_at:
                proxy.kill()
                outage_until = time.monotonic() + cfg.outage_seconds
                self.tl.outage_start_block = block
                self.log(f"block {block}: primary RPC down for {cfg.outage_seconds:g} s")
            if i == cfg.reorg_at:
                self._reorg(path, fees, i)
                block = int(self.rpc.call("eth_blockNumber"), 16)
                self.tl.reorg_block = block
            if proxy is not None and i == cfg.kill_at:
                self.procs["keeper"].kill9()
                self.tl.kill_block = block
                self.log(f"block {block}: keeper SIGKILLed, restarting")
                self.procs["keeper"].start()
            back = outage_until is not None and time.monotonic() >= outage_until
            if proxy is not None and back and not recovered:
                proxy.revive()
                proxy.rate_limit = 0.0
                recovered = True
                self.tl.recovery_block = block + 1
                self.log(f"block {block}: primary RPC back (no more 429s)")
            for name in ("keeper", "rival"):
                if name in self.procs and not self.procs[name].alive():  # restarted as a supervisor
                    # would; counted as a failure
                    self.unplanned.append(f"{name} died at block {block}: {self.procs[name].tail(400)}")
                    self.log(f"block {block}: {name} died unexpectedly, restarting")
                    self.procs[name].start()
            i += 1
            if not crash and recovered:
                nothing = not self.liq_by_block.get(block) and self._pending() == 0
                quiet = quiet + 1 if nothing else 0
                if quiet >= cfg.quiet_blocks:
                    break
            if i >= cfg.crash_blocks + cfg.max_tail_blocks:
                self.log("tail limit reached with accounts still liquidatable")
                break
        self.tl.last_block = int(self.rpc.call("eth_blockNumber"), 16)
        return blocks_mined

    # ------------------------------------------------------------------ against a running node

    def run_against(self, node: RunningNode) -> dict[str, Any]:
        """The crash on ``make run``'s chain, liquidated by ``make run``'s keeper: traders seeded, the
        crash with the base fee ×20 and the reorg, the page under load; the report read from that
        keeper's database, journal and page. No fault proxy, SIGKILL or competing keeper: they need
        control of the keeper process (the standalone drill has them)."""
        from keeper.chain.connect import connect
        from keeper.chain.deployments import Deployment

        cfg = self.cfg
        t_start = time.monotonic()
        self._fresh_workdir()
        self.rpc = Rpc(node.rpc_url)
        try:
            client = str(self.rpc.call("web3_clientVersion"))
        except Exception as exc:  # noqa: BLE001 - one line for the operator
            raise KeeperError(f"no node at {node.rpc_url} ({exc}): start it with `make run`") from None
        if "anvil" not in client.lower():
            raise KeeperError(f"crash-day needs an anvil dev chain; {node.rpc_url} is {client}")
        dep = Deployment.load(node.deployments)
        if int(self.rpc.call("eth_chainId"), 16) != dep.chain_id:
            raise KeeperError(f"{node.rpc_url} is not chain {dep.chain_id} of {node.deployments}")
        status = http_get(node.page_url + "/api/insurance-fund")[0]
        if status != 200:
            raise KeeperError(f"no keeper page at {node.page_url} (HTTP {status}): is `make run` running?")
        self.dep, self.dep_path = dep, node.deployments
        self.anvil_url, self.base = node.rpc_url, node.page_url
        self.exchange, self.oracle = dep.address("Exchange"), dep.address("OracleHub")
        self.fund = dep.address("InsuranceFund")
        self.markets = sorted(dep.markets, key=lambda m: m.id)
        self.addrs = [trader_address(cfg.seed, i) for i in range(cfg.traders)]
        self.liq_by_block = {}
        self.db_url, self.journal_url = node.db_url, node.journal_url
        self.leak_files = list(node.leak_files)
        self.keeper_address = self._running_keeper()
        self.log(
            f"crash day against the running node {node.rpc_url} (keeper {self.keeper_address}, page "
            f"{node.page_url}): {cfg.traders} traders (seed {cfg.seed}). Skipped here: the failing primary "
            "RPC, the SIGKILL and restart, the competing keeper — they need control of the keeper "
            "process; `keeper simulate --scenario crash-day` (without --against-running) has them"
        )
        latest = self.rpc.call("eth_getBlockByNumber", "latest", False)
        saved = (bool(self.rpc.call("anvil_getAutomine")), int(latest["gasLimit"], 16))
        stop_file = self.work / "load.stop"
        report: dict[str, Any]
        try:
            self._pause_simulator(node.pause_file)
            w3 = connect(node.rpc_url, dep.chain_id)
            sim = simulate(w3, dep, "calm", traders=cfg.traders, seed=cfg.seed, blocks=1,
                           risk_admin=node.risk_admin, log=lambda m: self.log(f"  {m}"))  # fmt: skip
            t_setup = time.monotonic() - t_start
            self.addrs = self._chain_accounts()
            owner = self.rpc.eth_calls([(self.markets[0].primary, calldata("owner"))])[0]
            assert owner is not None
            self.feeder = to_checksum_address(decode(["address"], owner)[0])
            prices = [
                decode(["uint80", "int256", "uint256", "uint256", "uint80"], r)[1] / FEED_SCALE  # type: ignore[arg-type]
                for r in self.rpc.eth_calls([(m.primary, calldata("latestRoundData")) for m in self.markets])
            ]
            head = int(self.rpc.call("eth_blockNumber"), 16)
            self._wait_index(head, cfg.startup_timeout)
            t_ready = time.monotonic() - t_start
            self.log(f"the running keeper has indexed the seeded traders (block {head}, {t_ready:.1f} s)")
            self._start_load(stop_file)
            fund_before = self._fund_balance("latest")
            blocks_mined = self._crash(prices, None)
            t_crash = time.monotonic() - t_start - t_ready
            self.log(f"crash over at block {self.tl.last_block} ({blocks_mined} blocks, {t_crash:.1f} s)")
            self._wait_index(self.tl.last_block, 60.0)
            self._stop_load(stop_file)
            self._capture_page()
            codes = {name: p.stop() for name, p in self.procs.items()}
            report = self.verify(fund_before, codes, {
                "skipped": "against the running node: its keeper's RPC is its own (no 429s, no outage)"})  # fmt: skip # noqa: E501
        finally:
            stop_file.touch()
            self._stop_all()
            with contextlib.suppress(Exception):
                self.rpc.call("evm_setBlockGasLimit", hex(saved[1]))
                self.rpc.call("evm_setAutomine", saved[0])
            if node.pause_file is not None:
                node.pause_file.unlink(missing_ok=True)
        report["mode"] = "against-running"
        report["setup"] = {"traders": cfg.traders, "seed": cfg.seed, "positions_open": sum(sim.positions_open.values()),  # noqa: E501
                           "tiers": sim.tiers, "setup_seconds": round(t_setup, 1),
                           "accounts_watched": len(self.addrs), "block_interval_seconds": cfg.block_interval}  # fmt: skip # noqa: E501
        report["seconds"] = {"setup": round(t_setup, 1), "ready": round(t_ready, 1),
                             "crash": round(t_crash, 1), "total": round(time.monotonic() - t_start, 1)}  # fmt: skip # noqa: E501
        self._save(report)
        return report

    #: what the key scan reads of the page: every public page and JSON endpoint, concatenated
    PAGE_PATHS = ("/", "/rules", "/whales", "/api/insurance-fund", "/api/markets", "/api/liquidations",
                  "/api/anomalies", "/api/whales", "/api/openapi.json")  # fmt: skip

    def _capture_page(self) -> None:
        """The public page and API as served at the end of the crash, for the key scan (the keepers'
        page dies with them); status: the worst of the answers (0 when one did not answer)."""
        answers = []
        for path in self.PAGE_PATHS:
            for _ in range(40):  # the node's per-client rate limit may still hold the load's burst
                answer = http_get(self.base + path)
                if answer[0] != 429:
                    break
                time.sleep(0.25)
            answers.append(answer)
        statuses = [a[0] for a in answers]
        status = 0 if 0 in statuses else max(statuses)
        self.page_capture = (status, b"\n".join(a[1] for a in answers))

    def _start_load(self, stop_file: Path) -> None:
        """The page under load from another process until ``stop_file`` appears (figures in load.json)."""
        argv = [sys.executable, "-m", "keeper.devchain.crashday", "load", "--base", self.base,
                "--out", str(self.work / "load.json"), "--stop-file", str(stop_file),
                "--concurrency", str(self.cfg.load_concurrency)]  # fmt: skip
        self.procs["load"] = Proc("load", argv, dict(os.environ), self.work / "load.log")
        self.procs["load"].start()

    def _stop_load(self, stop_file: Path) -> None:
        """Lets the load generator see its stop file and write its figures (SIGTERM would lose them)."""
        stop_file.touch()
        p = self.procs.get("load")
        if p is not None and p.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(15)

    def _chain_accounts(self) -> list[str]:
        """Every account that ever deposited (from the chain's logs, not the keeper's database), so
        that the running node's other traders (make run's calm market) are watched too."""
        flt = {"fromBlock": "0x0", "toBlock": "latest", "address": self.exchange, "topics": [DEPOSITED]}
        logs = self.rpc.call("eth_getLogs", flt)
        found = {to_checksum_address("0x" + lg["topics"][1][-40:]) for lg in logs}
        return sorted(found | set(self.addrs))

    def _running_keeper(self) -> str:
        """The running keeper's liquidation sender, from its journal (else dev-run.sh's dev key)."""
        from sqlalchemy import text

        from keeper.store.engine import make_engine

        engine = make_engine(self.journal_url)
        try:
            with engine.connect() as c:
                row = c.execute(text("select sender from keeper_tx where lane = 'liquidation' "
                                     "order by id desc limit 1")).first()  # fmt: skip
                if row is not None:
                    return str(row[0])
        except Exception:  # noqa: BLE001 - nothing journaled yet: the table may not exist
            pass
        finally:
            engine.dispose()
        return str(Account.from_key(KEEPER_KEY).address)

    def _wait_index(self, block: int, timeout: float) -> None:
        """Waits for the running keeper's index to reach ``block``."""
        from sqlalchemy import text

        from keeper.store.engine import make_engine

        engine = make_engine(self.db_url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                with contextlib.suppress(Exception), engine.connect() as c:
                    row = c.execute(text("select block_number from checkpoints")).first()
                    if row is not None and int(row[0]) >= block:
                        return
                if time.monotonic() > deadline:
                    raise KeeperError(
                        f"the running keeper's index did not reach block {block} in {timeout:g} s "
                        f"({self.db_url}): is its `keeper run` alive?"
                    )
                time.sleep(0.3)
        finally:
            engine.dispose()

    def _pause_simulator(self, pause_file: Path | None) -> None:
        """Pauses ``make run``'s calm simulator (it idles while the pause file exists and says so in
        ``<pause file>.ack``); refuses to go on when something else keeps mining."""
        if pause_file is not None:
            ack = pause_file.with_name(pause_file.name + ".ack")
            pause_file.parent.mkdir(parents=True, exist_ok=True)
            pause_file.write_text("crash-day\n")
            deadline = time.monotonic() + 15
            while not ack.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            if ack.exists():
                self.log(f"make run's simulator paused ({pause_file})")
                return
        h0 = int(self.rpc.call("eth_blockNumber"), 16)
        time.sleep(3)
        if int(self.rpc.call("eth_blockNumber"), 16) != h0:
            raise KeeperError(
                f"something keeps mining on {self.anvil_url} and did not pause (no {pause_file}.ack): "
                "stop it first (make run's simulator pauses by itself)"
            )
        self.log("no simulator running on the chain: nothing to pause")

    def _stop_all(self) -> None:
        for p in self.procs.values():
            with contextlib.suppress(Exception):
                p.stop(10)

    def _reorg(self, path: list[list[float]], fees: list[int], i: int) -> None:
        """Replaces the last ``reorg_depth`` blocks: same prices, other timestamps (so other hashes);
        whatever the keepers had mined there is gone from the chain."""
        d = self.cfg.reorg_depth
        head = int(self.rpc.call("eth_blockNumber"), 16)
        old = self.rpc.call("eth_getBlockByNumber", hex(head), False)["hash"]
        # As geth does, the node puts the orphaned blocks' transactions back into its pool (the oracle
        # updates excepted: they are re-mined below); without this a keeper's mined-then-orphaned
        # nonces would leave a gap (see the report: the journal treats "mined" as final).
        orphans: list[str] = []
        for b in range(head - d + 1, head + 1):
            blk = self.rpc.call("eth_getBlockByNumber", hex(b), True)
            for tx in blk["transactions"]:
                if tx["from"].lower() != self.feeder.lower():
                    orphans.append(self.rpc.call("eth_getRawTransactionByHash", tx["hash"]))
        self.rpc.call("anvil_rollback", d)
        reinjected = (
            sum(ok for ok, _ in self.rpc.batch([("eth_sendRawTransaction", [r]) for r in orphans]))
            if orphans
            else 0
        )
        self.ts = int(self.rpc.call("eth_getBlockByNumber", "latest", False)["timestamp"], 16) + 1
        for j in range(d):
            k = i - d + 1 + j
            self._oracle_block(path[k], fees[k])
        new = self.rpc.call("eth_getBlockByNumber", hex(head), False)["hash"]
        self.log(
            f"block {head}: {d}-block reorg ({old[:10]} -> {new[:10]}), "
            f"{reinjected}/{len(orphans)} orphaned transactions back in the pool"
        )

    def _fund_balance(self, block: str) -> int:
        r = self.rpc.eth_calls([(self.fund, calldata("balance"))], block)[0]
        return int(decode(["uint256"], r)[0]) if r else -1

    # ------------------------------------------------------------------ verification

    def _logs(self, topic: str, address: str | None = None) -> list[dict[str, Any]]:
        f: dict[str, Any] = {"fromBlock": hex(self.tl.crash_start_block), "toBlock": hex(self.tl.last_block),
                             "topics": [topic]}  # fmt: skip
        if address:
            f["address"] = address
        return list(self.rpc.call("eth_getLogs", f))

    def verify(
        self, fund_before: int, codes: dict[str, int | None], faults: dict[str, Any]
    ) -> dict[str, Any]:
        from keeper.indexer.target import IndexTarget
        from keeper.indexer.testing import fresh_dump
        from keeper.store.dump import diff_dumps, dump_tables
        from keeper.store.engine import make_engine

        cfg, tl, rpc = self.cfg, self.tl, self.rpc
        failures: list[str] = []
        me = self.keeper_address.lower()
        rival = Account.from_key(RIVAL_KEY).address.lower()

        # liquidations, per account: first Liquidated event vs crossing block
        liq = self._logs(LIQUIDATED, self.exchange)
        first_liq: dict[str, int] = {}
        by_keeper: Counter[str] = Counter()
        states: Counter[tuple[Any, ...]] = Counter()
        liq_txs: set[str] = set()
        for lg in liq:
            acct = to_checksum_address("0x" + lg["topics"][1][-40:])
            d = decode(LIQ_TYPES, bytes.fromhex(lg["data"][2:]))
            blk = int(lg["blockNumber"], 16)
            first_liq.setdefault(acct, blk)
            by_keeper["ours" if d[0].lower() == me else "rival" if d[0].lower() == rival else "other"] += 1
            states[(acct, lg["topics"][2], d[7], d[8], d[2])] += 1
            liq_txs.add(lg["transactionHash"])
        twice = [k for k, n in states.items() if n > 1]
        if twice:
            failures.append(f"{len(twice)} account states liquidated twice, e.g. {twice[0]}")
        still = self._liquidatable_at(tl.last_block)
        if still:
            failures.append(f"{len(still)} accounts still liquidatable at the end, e.g. {still[:3]}")
        never = [a for a in tl.crossing if a not in first_liq]
        if never:
            failures.append(
                f"{len(never)} accounts became liquidatable and were never liquidated: {never[:3]}"
            )

        # gas of every liquidation transaction (both keepers) and our transactions' outcomes
        receipts = {}
        blocks = rpc.batch(
            [("eth_getBlockByNumber", [hex(b), True]) for b in range(tl.crash_start_block, tl.last_block + 1)]
        )
        ours: list[dict[str, Any]] = []
        for ok, blk in blocks:
            for tx in blk["transactions"] if ok and blk else []:
                if tx["from"].lower() in (me, rival) or tx["hash"] in liq_txs:
                    receipts[tx["hash"]] = tx
                if tx["from"].lower() == me:
                    ours.append(tx)
        got = rpc.batch([("eth_getTransactionReceipt", [h]) for h in receipts])
        rc = {h: r for h, (ok, r) in zip(receipts, got, strict=True) if ok and r}
        liq_gas = sum(int(rc[h]["gasUsed"], 16) for h in liq_txs if h in rc)
        physical = math.ceil(liq_gas / cfg.block_gas_limit)
        bound = physical + 2
        lat = {a: first_liq[a] - c for a, c in tl.crossing.items() if a in first_liq}
        after = {
            a: first_liq[a] - max(c, tl.recovery_block) for a, c in tl.crossing.items() if a in first_liq
        }
        late = {a: v for a, v in after.items() if v > bound}
        if late:
            failures.append(f"{len(late)} accounts liquidated later than the physical limit ({bound} blocks) "
                            f"after RPC recovery, worst {max(late.values())}")  # fmt: skip
        reverted = [t for t in ours if rc.get(t["hash"], {}).get("status") == "0x0"]
        lost_races = 0
        for t in reverted:
            ok_race = False
            if t["input"].startswith(LIQUIDATE_BATCH):
                accts, _ = decode(["address[]", "uint256[]"], bytes.fromhex(t["input"][10:]))
                blk = int(t["blockNumber"], 16)
                ok_race = all(first_liq.get(to_checksum_address(a), 10**18) <= blk for a in accts)
            if ok_race:
                lost_races += 1
            else:
                failures.append(f"our transaction {t['hash']} reverted and was not a lost race")
        skipped_entries = lost_txs = 0
        for t in ours:
            if t["input"].startswith(LIQUIDATE_BATCH) and rc.get(t["hash"], {}).get("status") == "0x1":
                accts, _ = decode(["address[]", "uint256[]"], bytes.fromhex(t["input"][10:]))
                done = sum(
                    1 for lg in rc[t["hash"]]["logs"] if lg["topics"] and lg["topics"][0] == LIQUIDATED
                )
                skipped_entries += max(0, len(accts) - done)
                lost_txs += done == 0  # every entry already liquidated by the time it was mined

        # bad debt: the fund pays what it can, the rest is socialized
        bad = self._logs(BAD_DEBT, self.exchange)
        pay = self._logs(FUND_PAYOUT, self.fund)
        inc = self._logs(FUND_INCOME, self.fund)
        debt = paid_bd = socialized = 0
        for lg in bad:
            d_, p_, s_ = decode(["uint256", "uint256", "uint256"], bytes.fromhex(lg["data"][2:]))
            debt, paid_bd, socialized = debt + d_, paid_bd + p_, socialized + s_
            if d_ != p_ + s_:
                failures.append(
                    f"BadDebtSettled {lg['transactionHash']}: debt {d_} != paid {p_} + socialized {s_}"
                )
        paid_fund = 0
        for lg in pay:
            req, p_, bal_after = decode(["uint256", "uint256", "uint256"], bytes.fromhex(lg["data"][2:]))
            paid_fund += p_
            if p_ != req and bal_after != 0:
                failures.append(
                    f"FundPayout {lg['transactionHash']}: paid {p_} of {req} with {bal_after} left"
                )
        if paid_bd != paid_fund:
            failures.append(f"Σ BadDebtSettled.paidByFund {paid_bd} != Σ FundPayout.paid {paid_fund}")
        income = sum(decode(["uint256", "uint256"], bytes.fromhex(lg["data"][2:]))[0] for lg in inc)
        fund_after = self._fund_balance(hex(tl.last_block))
        fund_at_start = self._fund_balance(hex(tl.crash_start_block - 1))
        if fund_at_start + income - paid_fund != fund_after:
            failures.append(f"fund: {fund_at_start} + income {income} - payouts {paid_fund} != {fund_after}")

        # the database equals a fresh index of the final chain
        engine = make_engine(self.db_url)
        jengine = make_engine(self.journal_url)
        try:
            mine = dump_tables(engine, self.dep.chain_id)
            with jengine.connect() as c:
                from sqlalchemy import text

                jrows = c.execute(text("select sender, nonce, state, attempts, mined_tx_hash, receipt_status "
                                       "from keeper_tx where lower(sender) = :s"), {"s": me}).fetchall()  # fmt: skip # noqa: E501
                attempts = c.execute(text("select count(*) from keeper_tx_attempt")).scalar() or 0
        finally:
            engine.dispose()
            jengine.dispose()
        failures += [f"unplanned: {u}" for u in self.unplanned]
        fresh = fresh_dump(self.anvil_url, IndexTarget.from_deployment(self.dep), "sqlite", self.work)
        diff = diff_dumps(mine, fresh)
        if diff:
            failures.append("database != fresh index of the final chain:\n  " + "\n  ".join(diff[:12]))

        # nonces: one journal row per nonce, every mined tx of ours journaled, no nonce mined twice
        nonces = Counter(int(r[1]) for r in jrows)
        if any(n > 1 for n in nonces.values()):
            failures.append("a nonce appears twice in the journal")
        journaled = {str(r[4]).lower() for r in jrows if r[4]}
        chain_nonces = Counter(int(t["nonce"], 16) for t in ours)
        if any(n > 1 for n in chain_nonces.values()):
            failures.append("a nonce was mined twice")
        unknown = [t["hash"] for t in ours if t["hash"].lower() not in journaled]
        if unknown:
            failures.append(f"{len(unknown)} mined transactions of ours are not in the journal as mined")

        # the page: figures equal the chain at the block they are stamped with
        load = json.loads((self.work / "load.json").read_text()) if (self.work / "load.json").exists() else {}
        samples = load.get("samples", [])
        checked = orphaned = 0
        for s in samples:
            blk = rpc.call("eth_getBlockByNumber", hex(s["block_number"]), False)
            if blk is None or blk["hash"] != s["block_hash"]:
                orphaned += 1  # stamped with a block the reorg replaced: not comparable
                continue
            checked += 1
            want = self._fund_balance(hex(s["block_number"]))
            if want != s["balance"]:
                failures.append(f"page balance {s['balance']} at block {s['block_number']} != chain {want}")
        if not checked:
            failures.append("no page figures to check")
        lats = [x * 1000 for x in load.get("latencies", [])]
        served = sum(v for k, v in load.get("statuses", {}).items() if k == "200")

        # the keys: nowhere in logs, databases or page
        leaks = []
        # the page as served at the end of the crash (captured before the keepers were stopped)
        status, page = self.page_capture
        if status != 200:
            failures.append(f"the page did not answer at the end of the crash (status {status})")
        blobs = [p.log_path for p in self.procs.values()] + list(self.work.glob("*.db*")) + self.leak_files
        for key in KEYS:
            bare = key[2:].lower().encode()
            for f in blobs:
                if f.exists() and bare in f.read_bytes().lower():
                    leaks.append(f"{key[:6]}… in {f.name}")
            if bare in page.lower():
                leaks.append(f"{key[:6]}… in the page")
        if leaks:
            failures.append(f"key leaked: {leaks}")
        for name, code in codes.items():
            if name in ("keeper", "rival") and code not in (0, None):
                failures.append(f"{name} exited with {code} on SIGTERM")

        rows_mined = sum(1 for r in jrows if r[2] == "mined")
        return {
            "ok": not failures,
            "failures": failures,
            "blocks": {
                "crash_start": tl.crash_start_block,
                "crash_end": tl.crash_end_block,
                "outage_start": tl.outage_start_block,
                "reorg": tl.reorg_block,
                "keeper_killed": tl.kill_block,
                "rpc_recovered": tl.recovery_block,
                "last": tl.last_block,
            },  # fmt: skip
            "accounts": {
                "became_liquidatable": len(tl.crossing),
                "liquidated": len(first_liq),
                "liquidation_events": len(liq),
                "by_keeper": dict(by_keeper),
                "still_liquidatable": len(still),
            },  # fmt: skip
            "blocks_to_liquidation": {
                "p50": _pct(list(lat.values()), 0.5),
                "p99": _pct(list(lat.values()), 0.99),
                "max": max(lat.values(), default=None),
                "max_after_rpc_recovery": max(after.values(), default=None),
                "physical_limit": physical,
                "bound": bound,
                "liquidation_gas": liq_gas,
                "block_gas_limit": cfg.block_gas_limit,
            },  # fmt: skip
            "bad_debt": {
                "debt": debt,
                "paid_by_fund": paid_bd,
                "fund_payouts": paid_fund,
                "socialized": socialized,
                "events": len(bad),
            },  # fmt: skip
            "fund": {
                "before": fund_before,
                "at_crash_start": fund_at_start,
                "income": income,
                "after": fund_after,
            },  # fmt: skip
            "transactions": {
                "journal_rows": len(jrows),
                "mined": rows_mined,
                "attempts": attempts,
                "replaced": max(0, attempts - len(jrows)),
                "on_chain": len(ours),
                "reverted": len(reverted),
                "lost_races": lost_races,
                "lost_race_txs_mined": lost_txs,
                "skipped_batch_entries": skipped_entries,
            },  # fmt: skip
            "rpc_faults": faults,
            "page": {
                "requests": sum(load.get("statuses", {}).values()),
                "served_200": served,
                "statuses": load.get("statuses", {}),
                "p50_ms": _pct(lats, 0.5),
                "p99_ms": _pct(lats, 0.99),
                "figures_checked": checked,
                "figures_on_orphaned_blocks": orphaned,
                "final_status": status,
                "final_bytes": len(page),
            },  # fmt: skip
        }


def format_report(r: dict[str, Any]) -> str:
    b, a, lat = r["blocks"], r["accounts"], r["blocks_to_liquidation"]
    bd, f, tx, pg = r["bad_debt"], r["fund"], r["transactions"], r["page"]
    usd = lambda x: f"${x / 10**6:,.2f}"  # noqa: E731
    after = lat["max_after_rpc_recovery"]
    if after is not None and after < 0:
        after = f"{after} (all liquidated before it)"
    if r.get("mode") == "against-running":
        events = f"reorg at #{b['reorg']}; against the running node: no RPC faults, SIGKILL or rival keeper"
    else:
        events = (f"outage from #{b['outage_start']}, reorg at #{b['reorg']}, keeper killed at "
                  f"#{b['keeper_killed']}, RPC back at #{b['rpc_recovered']}")  # fmt: skip
    lines = [
        f"crash day: {'OK' if r['ok'] else 'FAILED'} — blocks #{b['crash_start']}-#{b['last']} ({events})",
        f"  accounts: {a['became_liquidatable']} became liquidatable, {a['liquidated']} liquidated "
        f"({a['liquidation_events']} events: {a['by_keeper']}), {a['still_liquidatable']} left",
        f"  blocks from crossing to liquidation: p50 {lat['p50']}, p99 {lat['p99']}, max {lat['max']}; "
        f"after RPC recovery max {after} vs limit {lat['bound']} "
        f"(physical {lat['physical_limit']}: {lat['liquidation_gas']:,} gas / {lat['block_gas_limit']:,})",
        f"  bad debt {usd(bd['debt'])}: fund paid {usd(bd['paid_by_fund'])} (payouts {usd(bd['fund_payouts'])}), "  # noqa: E501
        f"socialized {usd(bd['socialized'])}; fund {usd(f['before'])} -> {usd(f['after'])}",
        f"  our transactions: {tx['journal_rows']} sent and journaled ({tx['mined']} mined), {tx['replaced']} replacements, "  # noqa: E501
        f"{tx['reverted']} reverted ({tx['lost_races']} lost races); lost races mined: {tx['lost_race_txs_mined']} "  # noqa: E501
        f"transactions, {tx['skipped_batch_entries']} batch entries skipped (already liquidated)",
        f"  page: {pg['requests']} requests ({pg['served_200']} served), p50 {pg['p50_ms'] or 0:.1f} ms, "
        f"p99 {pg['p99_ms'] or 0:.1f} ms; {pg['figures_checked']} stamped figures checked against the chain",
        f"  rpc faults injected: {r['rpc_faults']}",
    ]
    lines += [f"  FAIL: {x}" for x in r["failures"]]
    return "\n".join(lines)


def run_crash_day(
    cfg: CrashDayConfig | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Runs the crash day (see the module docstring); returns the report (also saved as JSON)."""
    return CrashDay(cfg or CrashDayConfig(), log).run()


def run_crash_day_against(
    node: RunningNode, cfg: CrashDayConfig | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The crash day on ``make run``'s chain and keeper (see :meth:`CrashDay.run_against`)."""
    cfg = cfg or CrashDayConfig(workdir=REPO_ROOT / "var" / "crash-day-running")
    return CrashDay(cfg, log).run_against(node)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "load":
        sys.exit(load_main(sys.argv[2:]))
    report = run_crash_day()
    print(format_report(report))
    sys.exit(0 if report["ok"] else 1)
