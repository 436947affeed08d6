"""A reorg deeper than the indexer's window, on a real anvil: ``keeper index`` and ``keeper run`` send the
``deep_reorg`` operator alert to a real webhook (and SMTP server), then exit with one error line."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from alert_receivers import Inbox, alert_env, free_port, receivers, wait_for

from keeper.devchain.anvil import DEV_KEYS, rpc_call
from keeper.indexer.testing import Driver

pytestmark = pytest.mark.integration

WINDOW = 5
KEY = DEV_KEYS[3]  # anvil dev account 3


def checkpoint(db: Path) -> int | None:
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("select block_number from checkpoints").fetchone()
    except sqlite3.Error:
        return None
    return int(row[0]) if row else None


def reorg_past_the_window(url: str, d: Driver, depth: int) -> None:
    txs = [[d.trade_tx(d.traders[3 + i % 3], 0, (i + 1) * 10**14), i % depth] for i in range(depth)]
    rpc_call(url, "anvil_reorg", [depth, txs], timeout=60)
    rpc_call(url, "evm_mine", [], timeout=60)  # a block on top: the indexer sees its parent changed


def run_until_deep_reorg(
    args: list[str], deployed: Any, inbox: Inbox, d: Driver, tmp: Path, name: str
) -> tuple[int, str]:
    db = tmp / f"{name}.db"
    env = {
        **os.environ,
        **alert_env(inbox),
        "KEEPER_CHAIN__RPC_URLS": f'["{deployed.anvil.url}"]',
        "KEEPER_CHAIN__DEPLOYMENTS_FILE": str(deployed.path),
        "KEEPER_DATABASE__URL": f"sqlite:///{db}",
        "KEEPER_INDEXER__REORG_WINDOW": str(WINDOW),
        "KEEPER_INDEXER__POLL_INTERVAL": "0.2",
        "KEEPER_SERVER__PORT": str(free_port()),
        "KEEPER_METRICS__PORT": str(free_port()),
        "KEEPER_PRIVATE_KEY": KEY,
    }
    out = tmp / f"{name}.log"
    with out.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "keeper.cli", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:

        def alive() -> None:
            assert proc.poll() is None, out.read_text()[-3000:]

        head = int(str(rpc_call(deployed.anvil.url, "eth_blockNumber", [])), 16)
        wait_for("the index to reach the head", lambda: (checkpoint(db) or -1) >= head, 60, alive)
        reorg_past_the_window(deployed.anvil.url, d, WINDOW + 3)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return code, out.read_text()


def test_deep_reorg_alerts_the_operator_then_stops(deployed: Any, tmp_path: Path) -> None:
    d = Driver(deployed.w3, deployed.deployment)
    d.fund_traders()
    for i in range(4):
        d.send(d.trade_tx(d.traders[3 + i % 3], 0, 10**15))
    with receivers() as inbox:
        for name, args in (("index", ["index", "--no-progress"]),
                           ("run", ["run", "--no-serve", "--no-publish", "--no-funding"])):  # fmt: skip
            before = len(inbox.texts("ops"))
            t0 = time.monotonic()
            code, output = run_until_deep_reorg(args, deployed, inbox, d, tmp_path, name)
            lines = [ln for ln in output.splitlines() if ln.strip()]
            assert code == 2, output[-3000:]
            assert lines[-1].startswith("error: reorg deeper than the window: none of the"), lines[-5:]
            assert f"indexer.reorg_window = {WINDOW}" in lines[-1]
            assert sum(ln.startswith("error:") for ln in lines) == 1
            assert "Traceback" not in output
            if name == "run":  # --no-<part> leaves the part out (funding included)
                line = next(ln for ln in lines if "leader parts running: " in ln)
                parts = set(re.findall(r"[a-z]+", line.split("leader parts running: ")[1]))
                assert {"index", "liquidate"} <= parts and not {"funding", "publish"} & parts, line
            # the alert went out before the exit (once), by webhook and by email
            new = inbox.texts("ops")[before:]
            assert [t for t in new if "deep reorg" in t] == ["[CRITICAL] deep reorg"], new
            body = inbox.posts["ops"][before + new.index("[CRITICAL] deep reorg")]["text"]
            assert "the indexer stopped: reorg deeper than the window" in body and "re-index" in body
            assert inbox.subjects("ops@example.org").count("[CRITICAL] deep reorg") == (
                1 if name == "index" else 2
            )
            assert time.monotonic() - t0 < 60
