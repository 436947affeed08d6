"""Two keeper nodes on one PostgreSQL database: one leads (indexes, sends), the other serves and
stands by. The leader is killed with SIGKILL during a crash: the standby takes over within 15 s,
every liquidatable account is liquidated, none twice for the same state, no funding period settled
twice, and the index holds every event exactly once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from eth_abi import decode
from eth_utils import keccak
from sqlalchemy import create_engine, text

from keeper.devchain.anvil import DEV_KEYS, free_port
from keeper.devchain.simulate import Rpc, simulate, trader_address
from keeper.store.testdb import throwaway_database

KEY = DEV_KEYS[3]  # anvil dev account 3
FUNDING_KEY = DEV_KEYS[4]  # anvil dev account 4
TRADERS = 300
SEED = 13
LIQUIDATED = (
    "Liquidated(address,uint256,(address,int256,uint256,uint256,uint256,uint256,bool,int256,uint256,int256))"
)
SETTLED = "FundingSettled(uint256,uint256,int256,uint256,int256,uint256,uint256)"


def liquidatable(rpc: Rpc, exchange: str) -> list[str]:
    sel = keccak(text="isLiquidatable(address)")[:4].hex()
    addrs = [trader_address(SEED, i) for i in range(TRADERS)]
    out = rpc.eth_calls([(exchange, "0x" + sel + "00" * 12 + a[2:].lower()) for a in addrs])
    return [a for a, r in zip(addrs, out, strict=True) if r is not None and decode(["bool"], r)[0]]


def lead_time(log: Path, node: str) -> float | None:
    """Wall time (epoch s) of the node's 'leading as' line, from the JSON log."""
    for line in log.read_text().splitlines():
        if f"leading as {node}" in line:
            stamp = re.search(r'"timestamp":\s*"([^"]+)"', line)
            if stamp:
                return datetime.fromisoformat(stamp.group(1).replace("Z", "+00:00")).timestamp()
    return None


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_standby_takes_over_when_the_leader_is_killed(deployed: Any, tmp_path: Path) -> None:
    dep = deployed.deployment
    rpc = Rpc(deployed.anvil.url)
    exchange = dep.contracts["Exchange"]
    simulate(deployed.w3, dep, "calm", traders=TRADERS, seed=SEED, blocks=3, log=lambda _: None)
    with throwaway_database("postgres") as db_url:
        base_env = {
            **os.environ,
            "KEEPER_CHAIN__RPC_URLS": f'["{deployed.anvil.url}"]',
            "KEEPER_CHAIN__DEPLOYMENTS_FILE": str(deployed.path),
            "KEEPER_DATABASE__URL": db_url,
            "KEEPER_METRICS__ENABLED": "false",
            "KEEPER_LOGGING__FORMAT": "json",
            "KEEPER_PRIVATE_KEY": KEY,
            "KEEPER_FUNDING_KEY": FUNDING_KEY,
        }
        procs: dict[str, subprocess.Popen[bytes]] = {}
        logs = {n: tmp_path / f"{n}.log" for n in ("a", "b")}

        def start(node: str) -> None:
            env = {**base_env, "KEEPER_KEEPER__NODE_ID": node, "KEEPER_SERVER__PORT": str(free_port())}
            with logs[node].open("ab") as fh:
                procs[node] = subprocess.Popen(
                    [sys.executable, "-m", "keeper.cli", "run"], env=env, stdout=fh, stderr=subprocess.STDOUT
                )

        try:
            start("a")
            wait_for(lambda: lead_time(logs["a"], "a") is not None, 60, "node a never led")
            start("b")
            time.sleep(3)
            assert lead_time(logs["b"], "b") is None, "two leaders at once"
            assert procs["b"].poll() is None, logs["b"].read_text()[-2000:]

            simulate(deployed.w3, dep, "crash", traders=TRADERS, seed=SEED, blocks=4, log=lambda _: None)
            killed_at = time.time()
            procs["a"].send_signal(signal.SIGKILL)
            procs["a"].wait(timeout=10)
            wait_for(lambda: lead_time(logs["b"], "b") is not None, 20, "node b did not take over")
            took = (lead_time(logs["b"], "b") or 0) - killed_at
            assert took < 15, f"takeover took {took:.1f} s"

            # the rest of the crash, then an hour of chain time so funding falls due under node b
            simulate(deployed.w3, dep, "crash", traders=TRADERS, seed=SEED, log=lambda _: None)
            deadline = time.monotonic() + 90
            while left := liquidatable(rpc, exchange):
                assert procs["b"].poll() is None, logs["b"].read_text()[-3000:]
                assert time.monotonic() < deadline, f"{len(left)} accounts still liquidatable"
                rpc.call("evm_mine")
                time.sleep(0.5)
            latest = rpc.call("eth_getBlockByNumber", "latest", False)
            rpc.call("evm_mine", int(latest["timestamp"], 16) + 3_600)
            simulate(deployed.w3, dep, "calm", traders=TRADERS, seed=SEED, blocks=2, log=lambda _: None)
            settled_topic = "0x" + keccak(text=SETTLED).hex()

            def all_settled() -> bool:
                rpc.call("evm_mine")
                got = rpc.call(
                    "eth_getLogs", {"fromBlock": "0x0", "toBlock": "latest", "topics": [settled_topic]}
                )
                return len({lg["topics"][1] for lg in got}) == len(dep.markets)

            wait_for(all_settled, 60, "node b did not settle funding")
            time.sleep(2)  # the index catches up with the last blocks
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                p.wait(timeout=30)

        liq_logs = rpc.call(
            "eth_getLogs",
            {
                "fromBlock": "0x0",
                "toBlock": "latest",
                "address": exchange,
                "topics": ["0x" + keccak(text=LIQUIDATED).hex()],
            },
        )
        assert liq_logs, "nobody was liquidated"
        # "once": never two liquidations of the same account in the same state (same AV, MM and price)
        states = Counter(
            (lg["topics"][1], lg["topics"][2], lg["data"][2 + 64 * 2 : 2 + 64 * 3], lg["data"][2 + 64 * 7 :])
            for lg in liq_logs
        )
        assert max(states.values()) == 1
        settled = rpc.call(
            "eth_getLogs",
            {"fromBlock": "0x0", "toBlock": "latest", "topics": ["0x" + keccak(text=SETTLED).hex()]},
        )
        periods = Counter((lg["topics"][1], lg["topics"][2]) for lg in settled)
        assert max(periods.values()) == 1, "a funding period settled twice"

        # the index: every event of the deployment's contracts exactly once
        addresses = (
            [a for a in dep.contracts.values()]
            + [m.primary for m in dep.markets]
            + [m.secondary for m in dep.markets]
        )
        head = int(rpc.call("eth_blockNumber"), 16)
        engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            checkpoint = conn.execute(text("SELECT block_number FROM checkpoints")).scalar_one()
            indexed = conn.execute(
                text("SELECT block_hash, log_index FROM events WHERE block_number <= :b"), {"b": checkpoint}
            ).all()
        engine.dispose()
        assert checkpoint >= head - 2
        chain_logs = rpc.call(
            "eth_getLogs",
            {"fromBlock": hex(dep.deployment_block), "toBlock": hex(checkpoint), "address": addresses},
        )
        ours = {
            (lg["blockHash"], int(lg["logIndex"], 16))
            for lg in chain_logs
            if lg["address"].lower() != dep.contracts["MockUSDC"].lower()
        }
        assert len(indexed) == len(set(indexed)), "duplicate rows"
        assert {(h, int(i)) for h, i in indexed} == ours
