"""A local anvil dev chain as a context manager: for tests, `make run` and the simulator.

    with Anvil() as node:              # free port, chain id 31337
        w3 = Web3(Web3.HTTPProvider(node.url))

The node is stopped (terminate, then kill) when the block exits, even on an exception.
"""

from __future__ import annotations

import contextlib
import json
import platform
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from keeper.errors import KeeperError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
NODE_MODULES = REPO_ROOT / "contracts" / "node_modules"


def _native_anvil() -> Path:
    """The native anvil binary of the npm package; ``.bin/anvil`` is a node shim around it, and a
    signal to the shim would not reliably reach the node (an orphan anvil keeps its port)."""
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    native = NODE_MODULES / "@foundry-rs" / f"anvil-{sys.platform}-{machine}" / "bin" / "anvil"
    return native if native.exists() else NODE_MODULES / ".bin" / "anvil"


ANVIL_BIN = _native_anvil()

#: anvil's public development keys (accounts 0..6 of its "test … junk" mnemonic), never real funds:
#: 0 deployer/admin, 1 risk admin, 2 guardian; 3-5 the dev keeper's liquidation, funding and ADL keys;
#: 6 a competing keeper (crash-day).
DEV_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def rpc_call(url: str, method: str, params: list | None = None, timeout: float = 2.0) -> object:
    """One JSON-RPC call with the standard library (no web3 needed); raises OSError/ValueError."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        reply = json.loads(resp.read())
    if "error" in reply:
        raise ValueError(f"{method}: {reply['error']}")
    return reply["result"]


class Anvil:
    """Starts ``anvil`` on 127.0.0.1; ``.url``/``.port``/``.chain_id`` once started."""

    def __init__(
        self,
        port: int | None = None,
        chain_id: int = 31337,
        extra_args: Sequence[str] = (),
        binary: str | Path | None = None,
        startup_timeout: float = 20.0,
        host: str = "127.0.0.1",
        log_path: str | Path | None = None,
    ) -> None:
        self.binary = Path(binary) if binary else ANVIL_BIN
        self.host = host
        self.port = port or free_port(host)
        self.chain_id = chain_id
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Anvil:
        if not self.binary.exists():
            raise KeeperError(f"anvil not found at {self.binary}: run make setup (npm install in contracts/)")
        cmd = [
            str(self.binary),
            "--host", self.host,
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            *self.extra_args,
        ]  # fmt: skip
        out: BinaryIO | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            out = self._log
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise KeeperError(f"anvil exited with code {code} on start (port {self.port} in use?)")
            try:
                got = int(str(rpc_call(self.url, "eth_chainId", timeout=1.0)), 16)
                if got != self.chain_id:
                    self.stop()
                    raise KeeperError(
                        f"{self.url} answers chain {got}, expected {self.chain_id}: port taken?"
                    )
                return self
            except (OSError, ValueError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise KeeperError(
                    f"anvil did not answer eth_chainId on {self.url} within {self.startup_timeout:g} s"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort: never leave an orphan node behind
        if getattr(self, "proc", None) is not None:
            with contextlib.suppress(Exception):
                self.stop()
