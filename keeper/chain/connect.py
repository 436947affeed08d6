"""A checked connection to the chain: one-line errors for an unreachable node or the wrong chain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import requests
from eth_utils import to_checksum_address
from web3 import Web3

from keeper.errors import KeeperError

if TYPE_CHECKING:
    from keeper.config import Settings

DEFAULT_TIMEOUT = 10.0


def make_web3(url: str, timeout: float = DEFAULT_TIMEOUT) -> Web3:
    """A web3.py ``Web3`` over HTTP with a request timeout (no network call is made here)."""
    if not url.startswith(("http://", "https://")):
        raise KeeperError(f"RPC URL must start with http:// or https://, got {url!r}")
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))


def describe_rpc_error(exc: BaseException, timeout: float | None = None) -> str:
    """A short reason for a failed RPC request: 'connection refused', 'timed out after 10 s', ..."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(x) for x in chain).lower()
    if any(isinstance(x, ConnectionRefusedError) for x in chain) or "connection refused" in text:
        return "connection refused"
    if any(isinstance(x, requests.Timeout | TimeoutError) for x in chain) or "timed out" in text:
        return f"timed out after {timeout:g} s" if timeout else "timed out"
    if "name or service not known" in text or "nodename nor servname" in text or "failed to resolve" in text:
        return "unknown host"
    for x in chain:
        if isinstance(x, requests.HTTPError) and x.response is not None:
            return f"HTTP {x.response.status_code} {x.response.reason}"
    if any(isinstance(x, requests.ConnectionError | ConnectionError) for x in chain):
        return "connection failed"
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:160]


def connect(
    settings_or_url: Settings | str,
    expected_chain_id: int | None = None,
    timeout: float | None = None,
) -> Web3:
    """Connects and checks the chain id.

    ``settings_or_url`` is either :class:`keeper.config.Settings` (first ``chain.rpc_urls`` entry,
    ``chain.request_timeout``, and ``chain.chain_id`` when ``expected_chain_id`` is not given) or a URL.
    """
    if isinstance(settings_or_url, str):
        url = settings_or_url
        tmo = timeout or DEFAULT_TIMEOUT
    else:
        url = settings_or_url.chain.rpc_urls[0]
        tmo = timeout or settings_or_url.chain.request_timeout
        if expected_chain_id is None:
            expected_chain_id = settings_or_url.chain.chain_id
    w3 = make_web3(url, tmo)
    try:
        got = int(w3.eth.chain_id)
    except Exception as exc:  # noqa: BLE001 - any failure here means the node is not usable
        raise KeeperError(f"cannot reach RPC {url}: {describe_rpc_error(exc, tmo)}") from None
    if expected_chain_id is not None and got != expected_chain_id:
        raise KeeperError(f"RPC {url} serves chain {got}, expected {expected_chain_id}")
    return w3


def rpc_url(w3: Web3) -> str:
    return str(getattr(w3.provider, "endpoint_uri", "") or "?")


def require_code(w3: Web3, address: str, name: str) -> None:
    """KeeperError unless ``address`` holds contract code (the deployments file matches the chain)."""
    addr = to_checksum_address(address)
    try:
        code = w3.eth.get_code(addr)
    except Exception as exc:  # noqa: BLE001
        raise KeeperError(f"cannot reach RPC {rpc_url(w3)}: {describe_rpc_error(exc)}") from None
    if len(code) == 0:
        raise KeeperError(f"no contract code for {name} at {addr}, is the deployments file for this chain?")


def contract(w3: Web3, name: str, address: str, abi: list[dict[str, Any]] | None = None) -> Any:
    """A web3 contract object for ``name`` (ABI from abis/) at ``address``."""
    from keeper.chain.artifacts import load_abi

    return w3.eth.contract(address=to_checksum_address(address), abi=abi or load_abi(name))
