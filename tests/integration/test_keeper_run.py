"""`keeper run` as an operator runs it: one process indexes, liquidates a crash, publishes and serves
the page; SIGTERM stops it cleanly; the key appears nowhere in its logs or database."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from eth_abi import decode
from eth_account import Account
from eth_utils import keccak

from keeper.devchain.simulate import Rpc, simulate, trader_address

KEY = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"  # anvil dev account 3
FUNDING_KEY = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"  # anvil dev account 4
ADL_KEY = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"  # anvil dev account 5
TRADERS = 300
SEED = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def liquidatable(rpc: Rpc, exchange: str) -> list[str]:
    sel = keccak(text="isLiquidatable(address)")[:4].hex()
    addrs = [trader_address(SEED, i) for i in range(TRADERS)]
    out = rpc.eth_calls([(exchange, "0x" + sel + "00" * 12 + a[2:].lower()) for a in addrs])
    return [a for a, r in zip(addrs, out, strict=True) if r is not None and decode(["bool"], r)[0]]


def test_keeper_run_liquidates_a_crash_and_serves_the_page(deployed: Any, tmp_path: Path) -> None:
    dep = deployed.deployment
    rpc = Rpc(deployed.anvil.url)
    simulate(deployed.w3, dep, "calm", traders=TRADERS, seed=SEED, blocks=3, log=lambda _: None)
    port, metrics_port = free_port(), free_port()
    db = tmp_path / "keeper.db"
    env = {
        **os.environ,
        "KEEPER_CHAIN__RPC_URLS": f'["{deployed.anvil.url}"]',
        "KEEPER_CHAIN__WS_URL": deployed.anvil.url.replace("http", "ws"),
        "KEEPER_CHAIN__DEPLOYMENTS_FILE": str(deployed.path),
        "KEEPER_DATABASE__URL": f"sqlite:///{db}",
        "KEEPER_SERVER__PORT": str(port),
        "KEEPER_METRICS__PORT": str(metrics_port),
        "KEEPER_LOGGING__FORMAT": "json",
        "KEEPER_LOGGING__LEVEL": "DEBUG",
        "KEEPER_PRIVATE_KEY": KEY,
        "KEEPER_FUNDING_KEY": FUNDING_KEY,
        "KEEPER_ADL_KEY": ADL_KEY,
    }
    log_path = tmp_path / "keeper.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keeper.cli", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while get(f"http://127.0.0.1:{port}/api/insurance-fund")[0] != 200:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the page never came up"
            time.sleep(0.3)

        simulate(deployed.w3, dep, "crash", traders=TRADERS, seed=SEED, log=lambda _: None)
        deadline = time.monotonic() + 90
        while left := liquidatable(rpc, dep.contracts["Exchange"]):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{len(left)} accounts still liquidatable"
            rpc.call("evm_mine")  # the keeper follows the head; give it blocks
            time.sleep(0.5)

        keeper = Account.from_key(KEY).address.lower()
        topic = (
            "0x"
            + keccak(
                text="Liquidated(address,uint256,(address,int256,uint256,uint256,uint256,uint256,bool,int256,uint256,int256))"
            ).hex()
        )
        logs = rpc.call(
            "eth_getLogs",
            {
                "fromBlock": "0x0",
                "toBlock": "latest",
                "address": dep.contracts["Exchange"],
                "topics": [topic],
            },
        )
        ours = [lg for lg in logs if lg["data"][26:66].lower() == keeper[2:]]
        assert ours, "the keeper liquidated nothing"

        # An hour of chain time later (feeds refreshed by the simulator), funding falls due: the keeper
        # settles every market once, on its own funding key.
        latest = rpc.call("eth_getBlockByNumber", "latest", False)
        rpc.call("evm_mine", int(latest["timestamp"], 16) + 3_600)
        simulate(deployed.w3, dep, "calm", traders=TRADERS, seed=SEED, blocks=2, log=lambda _: None)
        settled_topic = (
            "0x" + keccak(text="FundingSettled(uint256,uint256,int256,uint256,int256,uint256,uint256)").hex()
        )
        deadline = time.monotonic() + 60
        while True:
            settled = rpc.call(
                "eth_getLogs", {"fromBlock": "0x0", "toBlock": "latest", "topics": [settled_topic]}
            )
            if len({lg["topics"][1] for lg in settled}) == len(dep.markets):
                break
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"funding settled on {len(settled)} markets only"
            rpc.call("evm_mine")
            time.sleep(0.5)
        funder = Account.from_key(FUNDING_KEY).address.lower()
        for lg in settled:
            tx = rpc.call("eth_getTransactionByHash", lg["transactionHash"])
            assert tx["from"].lower() == funder
        assert len(settled) == len(dep.markets)  # exactly once per market for the period

        status, body = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"Insurance fund" in body
        status, body = get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and b"keeper_" in body
        # the dashboard's gauges are fed by the running keeper
        assert b'keeper_pending_transactions{lane="liquidation"}' in body
        assert re.search(rb'keeper_accounts_by_tier\{tier="healthy"\} [1-9]', body), body[:2000]
        assert re.search(rb"keeper_events_indexed_total [1-9]", body)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log_path.read_text()[-3000:]
    logs_text = log_path.read_text().lower()
    for key in (KEY, FUNDING_KEY, ADL_KEY):
        bare = key[2:].lower()
        assert bare not in logs_text
        for f in tmp_path.glob("keeper.db*"):
            assert bare.encode() not in f.read_bytes().lower()
