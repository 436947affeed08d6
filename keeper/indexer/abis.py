"""The contracts' ABIs, for the event decoder.

Looked up, in order, in ``abis/<Name>.json`` (a JSON list, produced by ``make abis``) and in forge's
build output ``contracts/out/<Name>.sol/<Name>.json`` (its ``"abi"`` key).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, cast

import orjson

from keeper.errors import KeeperError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
ABI_DIRS = (REPO_ROOT / "abis",)
FORGE_OUT = REPO_ROOT / "contracts" / "out"

#: The contracts whose events the indexer reads (the token's Transfer/Approval are left out on purpose).
INDEXED_CONTRACTS = ("Exchange", "OracleHub", "LiquidityVault", "InsuranceFund", "MockAggregator")


@cache
def load_abi(name: str) -> list[dict[str, Any]]:
    """The ABI (a list of entries) of contract ``name``; KeeperError when it cannot be found."""
    for d in ABI_DIRS:
        path = d / f"{name}.json"
        if path.exists():
            data = orjson.loads(path.read_bytes())
            return cast(list[dict[str, Any]], data["abi"] if isinstance(data, dict) else data)
    path = FORGE_OUT / f"{name}.sol" / f"{name}.json"
    if path.exists():
        return cast(list[dict[str, Any]], orjson.loads(path.read_bytes())["abi"])
    raise KeeperError(f"ABI of {name} not found in abis/ or contracts/out/: run make abis (or make build)")


def event_abis(name: str) -> list[dict[str, Any]]:
    return [e for e in load_abi(name) if e.get("type") == "event"]
