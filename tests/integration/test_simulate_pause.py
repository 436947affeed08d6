"""`keeper simulate --forever --pause-file PATH` (make run's calm market) idles while PATH exists, says so
in PATH.ack, mines nothing meanwhile, and resumes from the chain's prices when PATH goes: what
`keeper simulate --scenario crash-day --against-running` relies on to have the chain to itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_abi import decode

from keeper.devchain.simulate import Rpc, calldata

pytestmark = pytest.mark.integration


def _until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_calm_forever_pauses_while_the_pause_file_exists(deployed: Any, tmp_path: Path) -> None:
    url = deployed.anvil.url
    rpc = Rpc(url)
    pause, ack = tmp_path / "simulate.pause", tmp_path / "simulate.pause.ack"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
    cmd = [sys.executable, "-m", "keeper.cli", "simulate", "--forever", "--interval", "0.1", "--traders", "5",
           "--rpc-url", url, "--deployments", str(deployed.path), "--pause-file", str(pause)]  # fmt: skip

    def price(feed: str) -> int:
        raw = rpc.eth_calls([(feed, calldata("latestRoundData"))])[0]
        assert raw is not None
        return int(decode(["uint80", "int256", "uint256", "uint256", "uint80"], raw)[1])

    log = tmp_path / "sim.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        head = lambda: int(rpc.call("eth_blockNumber"), 16)  # noqa: E731
        start = head()
        assert _until(lambda: head() > start + 3, 60), log.read_text()  # trading
        pause.write_text("test\n")
        assert _until(ack.exists, 10), "no acknowledgement of the pause"
        assert ack.read_text().strip() == str(proc.pid)
        paused_at = head()
        time.sleep(1.5)  # 15 of its intervals
        assert head() == paused_at, "blocks were mined while paused"
        # another drill moves BTC 20 % down meanwhile: the simulator resumes from there
        btc = deployed.deployment.markets[0]
        owner = "0x" + rpc.eth_calls([(btc.primary, calldata("owner"))])[0][-20:].hex()  # type: ignore[index]
        before = price(btc.primary)
        for feed in (btc.primary, btc.secondary):
            data = calldata("setAnswer", ("int256",), (before * 8 // 10,))
            rpc.call("eth_sendTransaction", {"from": owner, "to": feed, "data": data, "gas": hex(100_000)})
        rpc.call("evm_mine")
        pause.unlink()
        assert _until(lambda: not ack.exists(), 10)
        assert _until(lambda: head() > paused_at + 4, 30), log.read_text()
        assert proc.poll() is None
        after = price(btc.primary)
        assert abs(after - before * 8 // 10) < before // 50, (before, after)  # a calm walk from -20 %
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert "paused while" in text and "resumed" in text
