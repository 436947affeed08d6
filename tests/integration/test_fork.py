"""An operator's rehearsal: the keeper on an anvil fork of a running chain indexes the history it
inherits and liquidates a crash that happens only on the fork."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from eth_abi import decode
from eth_utils import keccak
from sqlalchemy import create_engine, text

from keeper.chain.connect import connect
from keeper.devchain.anvil import DEV_KEYS, Anvil
from keeper.devchain.simulate import Rpc, simulate, trader_address

KEY = DEV_KEYS[3]  # anvil dev account 3
FUNDING_KEY = DEV_KEYS[4]  # anvil dev account 4
TRADERS = 200
SEED = 9


def liquidatable(rpc: Rpc, exchange: str) -> list[str]:
    sel = keccak(text="isLiquidatable(address)")[:4].hex()
    addrs = [trader_address(SEED, i) for i in range(TRADERS)]
    out = rpc.eth_calls([(exchange, "0x" + sel + "00" * 12 + a[2:].lower()) for a in addrs])
    return [a for a, r in zip(addrs, out, strict=True) if r is not None and decode(["bool"], r)[0]]


def test_keeper_indexes_and_liquidates_on_an_anvil_fork(deployed: Any, tmp_path: Path) -> None:
    dep = deployed.deployment
    simulate(deployed.w3, dep, "calm", traders=TRADERS, seed=SEED, blocks=3, log=lambda _: None)
    origin_head = deployed.w3.eth.block_number
    with Anvil(extra_args=["--fork-url", deployed.anvil.url]) as fork:
        fork_rpc = Rpc(fork.url)
        assert int(fork_rpc.call("eth_blockNumber"), 16) == origin_head
        env = {
            **os.environ,
            "KEEPER_CHAIN__RPC_URLS": f'["{fork.url}"]',
            "KEEPER_CHAIN__DEPLOYMENTS_FILE": str(deployed.path),
            "KEEPER_DATABASE__URL": f"sqlite:///{tmp_path / 'fork.db'}",
            "KEEPER_SERVER__PORT": "0",
            "KEEPER_METRICS__ENABLED": "false",
            "KEEPER_PRIVATE_KEY": KEY,
            "KEEPER_FUNDING_KEY": FUNDING_KEY,
        }
        log_path = tmp_path / "keeper.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "keeper.cli", "run", "--no-serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            # The crash happens on the fork only: the origin chain never sees it.
            simulate(connect(fork.url, 31337), dep, "crash", traders=TRADERS, seed=SEED, log=lambda _: None)
            assert liquidatable(fork_rpc, dep.contracts["Exchange"]), "the crash made nobody liquidatable"
            deadline = time.monotonic() + 90
            while left := liquidatable(fork_rpc, dep.contracts["Exchange"]):
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, f"{len(left)} accounts still liquidatable on the fork"
                fork_rpc.call("evm_mine")
                time.sleep(0.5)
            assert liquidatable(Rpc(deployed.anvil.url), dep.contracts["Exchange"]) == []  # origin untouched
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        assert code == 0, log_path.read_text()[-3000:]
        # The index on the fork holds the inherited history and the fork's own liquidations.
        status = subprocess.run(
            [sys.executable, "-m", "keeper.cli", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert '"Liquidated"' in status.stdout and '"PositionChanged"' in status.stdout, status.stdout[-2000:]
        engine = create_engine(f"sqlite:///{tmp_path / 'fork.db'}")
        with engine.connect() as conn:
            first_trade, first_liq = conn.execute(
                text(
                    "SELECT MIN(CASE WHEN event_name = 'PositionChanged' THEN block_number END), "
                    "MIN(CASE WHEN event_name = 'Liquidated' THEN block_number END) FROM events"
                )
            ).one()
        engine.dispose()
        assert first_trade <= origin_head < first_liq  # history from before the fork, liquidations after
