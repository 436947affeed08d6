"""What the indexer reads: a chain id, a start block and the contracts' addresses (with their ABI names)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keeper.indexer.decode import checksum_address

#: deployment contract name -> ABI name, for the contracts whose events are indexed. The collateral
#: token (MockUSDC) is left out on purpose: its Transfer/Approval events are noise for the keeper.
INDEXED = {
    "Exchange": "Exchange",
    "OracleHub": "OracleHub",
    "LiquidityVault": "LiquidityVault",
    "InsuranceFund": "InsuranceFund",
}
FEED_ABI = "MockAggregator"  # Chainlink-style AnswerUpdated(int256 indexed, uint256 indexed, uint256)


@dataclass(frozen=True)
class IndexTarget:
    chain_id: int
    start_block: int
    #: lower-case address -> ABI (contract) name
    contracts: dict[str, str] = field(default_factory=dict)

    @property
    def addresses(self) -> list[str]:
        return sorted(checksum_address(a) for a in self.contracts)

    def contract_of(self, address: str) -> str | None:
        return self.contracts.get(address.lower())

    @property
    def deployment_key(self) -> str:
        """Stable identity of the deployment (chain id and sorted name:address pairs)."""
        text = f"{self.chain_id}|" + "|".join(f"{n}:{a}" for a, n in sorted(self.contracts.items()))
        return "0x" + hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_deployment(cls, dep: Any, start_block: int | None = None) -> IndexTarget:
        """From :class:`keeper.chain.deployments.Deployment` (or anything shaped like it)."""
        contracts: dict[str, str] = {}
        for name, abi_name in INDEXED.items():
            addr = dep.contracts.get(name)
            if addr:
                contracts[addr.lower()] = abi_name
        for m in dep.markets:
            for attr in ("primary", "secondary"):
                addr = m[attr] if isinstance(m, dict) else getattr(m, attr)
                if addr:
                    contracts.setdefault(addr.lower(), FEED_ABI)
        start = dep.deployment_block if start_block is None else start_block
        return cls(chain_id=int(dep.chain_id), start_block=int(start), contracts=contracts)

    @classmethod
    def from_file(cls, path: str | Path, start_block: int | None = None) -> IndexTarget:
        from keeper.chain.deployments import Deployment, default_path

        return cls.from_deployment(Deployment.load(default_path(path)), start_block)
