"""The deployments file: which contracts, on which chain, from which block (where indexing starts).

A JSON file, e.g. ``config/deployments/local.json`` written by ``keeper deploy``::

    {
      "chain_id": 31337,
      "deployment_block": 1,
      "contracts": {"Exchange": "0x…", "OracleHub": "0x…", …},
      "markets": [{"id": 0, "symbol": "BTC", "primary": "0x…", "secondary": "0x…"}, …]
    }

Addresses are EIP-55 checksummed on load and save. ``contracts`` keys are contract names as in
``abis/<Name>.json`` (MockUSDC is the collateral token on dev chains); ``primary``/``secondary`` are
the market's two price feeds (Chainlink-style aggregators).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import is_address, to_checksum_address

from keeper.errors import KeeperError

#: The contracts every deployment has (the collateral token may be named otherwise on a real chain).
REQUIRED_CONTRACTS = ("Exchange", "OracleHub", "LiquidityVault", "InsuranceFund")


def _checksum(value: Any, what: str) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise ValueError(f"{what} is not an address: {value!r}")
    return to_checksum_address(value)


@dataclass(frozen=True)
class Market:
    id: int
    symbol: str
    primary: str
    secondary: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "symbol": self.symbol, "primary": self.primary, "secondary": self.secondary}


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    deployment_block: int
    contracts: dict[str, str] = field(default_factory=dict)
    markets: list[Market] = field(default_factory=list)

    def address(self, name: str) -> str:
        try:
            return self.contracts[name]
        except KeyError:
            raise KeeperError(f"the deployments file has no {name} address") from None

    @property
    def collateral(self) -> str:
        """The collateral token: ``Collateral`` if named so, else the dev chain's ``MockUSDC``."""
        return self.contracts.get("Collateral") or self.address("MockUSDC")

    def market(self, key: int | str) -> Market:
        for m in self.markets:
            if m.id == key or (isinstance(key, str) and m.symbol.upper() == key.upper()):
                return m
        raise KeeperError(
            f"no market {key!r} in the deployment (have {', '.join(m.symbol for m in self.markets)})"
        )

    # ----------------------------------------------------------------- (de)serialisation

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "deployment_block": self.deployment_block,
            "contracts": {k: to_checksum_address(v) for k, v in self.contracts.items()},
            "markets": [m.to_json() for m in self.markets],
        }

    @classmethod
    def from_json(cls, data: Any) -> Deployment:
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        chain_id, block = data.get("chain_id"), data.get("deployment_block")
        if not isinstance(chain_id, int) or isinstance(chain_id, bool) or chain_id <= 0:
            raise ValueError(f"chain_id must be a positive integer, got {chain_id!r}")
        if not isinstance(block, int) or isinstance(block, bool) or block < 0:
            raise ValueError(f"deployment_block must be a non-negative integer, got {block!r}")
        raw = data.get("contracts")
        if not isinstance(raw, dict):
            raise ValueError("contracts must be an object of name -> address")
        contracts = {str(k): _checksum(v, f"contracts.{k}") for k, v in raw.items()}
        missing = [n for n in REQUIRED_CONTRACTS if n not in contracts]
        if missing:
            raise ValueError(f"contracts lacks {', '.join(missing)}")
        markets = []
        for i, m in enumerate(data.get("markets") or []):
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("id"), int)
                or not isinstance(m.get("symbol"), str)
            ):
                raise ValueError(f"markets[{i}] needs an integer id and a string symbol")
            markets.append(
                Market(
                    id=m["id"],
                    symbol=m["symbol"],
                    primary=_checksum(m.get("primary"), f"markets[{i}].primary"),
                    secondary=_checksum(m.get("secondary"), f"markets[{i}].secondary"),
                )
            )
        return cls(chain_id=chain_id, deployment_block=block, contracts=contracts, markets=markets)

    @classmethod
    def load(cls, path: str | Path) -> Deployment:
        p = Path(path)
        if not p.is_file():
            raise KeeperError(f"deployments file not found: {p} (run keeper deploy, or pass --deployments)")
        try:
            return cls.from_json(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise KeeperError(f"malformed deployments file {p}: {' '.join(str(exc).split())}") from None

    def save(self, path: str | Path) -> Path:
        """Writes atomically (temp file + rename), creating the folder."""
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, p)
        except OSError as exc:
            raise KeeperError(f"cannot write deployments file {p}: {exc.strerror or exc}") from None
        return p


def load(path: str | Path) -> Deployment:
    return Deployment.load(path)


def save(deployment: Deployment, path: str | Path) -> Path:
    return deployment.save(path)


def default_path(settings_path: str | Path) -> Path:
    """The deployments file named in the config: a relative path is relative to the repository root."""
    from keeper.config import REPO_ROOT

    p = Path(settings_path)
    return p if p.is_absolute() else REPO_ROOT / p
