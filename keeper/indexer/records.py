"""The indexer's in-memory records: decoded logs and block headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keeper.indexer.decode import EventSpec

MAX_BIGINT = (1 << 63) - 1


@dataclass(slots=True)
class LogRecord:
    """One log of the deployment, decoded (``event_name`` None when no ABI matched)."""

    block_number: int
    block_hash: str
    block_timestamp: int | None
    tx_hash: str
    tx_index: int
    log_index: int
    address: str
    contract: str | None
    event_name: str | None
    args: dict[str, Any]  # Python values (ints as ints); raw topics/data for unknown logs
    spec: EventSpec | None = None

    @property
    def position(self) -> tuple[int, int]:
        return (self.block_number, self.log_index)

    def json_args(self) -> dict[str, Any]:
        return self.spec.to_json(self.args) if self.spec is not None else self.args

    def event_row(self, chain_id: int) -> dict[str, Any]:
        """The ``events`` table row of this log."""
        account = self.args.get("account") if self.spec is not None else None
        market = self.args.get("marketId") if self.spec is not None else None
        return {
            "chain_id": chain_id,
            "block_number": self.block_number,
            "block_hash": self.block_hash,
            "block_timestamp": self.block_timestamp,
            "tx_hash": self.tx_hash,
            "tx_index": self.tx_index,
            "log_index": self.log_index,
            "address": self.address,
            "contract": self.contract,
            "event_name": self.event_name,
            "account": account if isinstance(account, str) else None,
            "market_id": market if isinstance(market, int) and 0 <= market <= MAX_BIGINT else None,
            "args": self.json_args(),
        }


@dataclass(slots=True, frozen=True)
class BlockHeader:
    number: int
    hash: str
    parent_hash: str
    timestamp: int

    @classmethod
    def from_rpc(cls, obj: dict[str, Any]) -> BlockHeader:
        return cls(
            number=int(obj["number"], 16),
            hash=obj["hash"].lower(),
            parent_hash=obj["parentHash"].lower(),
            timestamp=int(obj["timestamp"], 16),
        )

    def row(self, chain_id: int) -> dict[str, Any]:
        return {
            "chain_id": chain_id,
            "number": self.number,
            "hash": self.hash,
            "parent_hash": self.parent_hash,
            "timestamp": self.timestamp,
        }
