"""Contract calls as raw JSON-RPC: calldata from the ABI (abis/<Name>.json), results decoded with eth_abi.

Used by the publisher (one JSON-RPC batch of ``eth_call`` at one block) and by /api/explain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_abi import decode, encode
from eth_utils import keccak

from keeper.indexer.abis import load_abi

__all__ = ["Fn", "fn", "ErrorSpec", "error_specs", "decode_error", "canonical_type"]


def canonical_type(param: Mapping[str, Any]) -> str:
    """The canonical ABI type of a parameter (tuples spelled out)."""
    t = str(param["type"])
    if t.startswith("tuple"):
        inner = ",".join(canonical_type(c) for c in param.get("components", []))
        return f"({inner}){t[len('tuple') :]}"
    return t


@dataclass(frozen=True)
class Fn:
    contract: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def signature(self) -> str:
        return f"{self.name}({','.join(self.inputs)})"

    @property
    def selector(self) -> bytes:
        return keccak(text=self.signature)[:4]

    def data(self, *args: Any) -> str:
        body = encode(list(self.inputs), list(args)) if self.inputs else b""
        return "0x" + (self.selector + body).hex()

    def call(
        self, to: str, *args: Any, block: int | str = "latest", sender: str | None = None
    ) -> tuple[str, list[Any]]:
        """An ``eth_call`` (method, params) for a JSON-RPC batch."""
        tx: dict[str, Any] = {"to": to, "data": self.data(*args)}
        if sender is not None:
            tx["from"] = sender
        tag = hex(block) if isinstance(block, int) else block
        return "eth_call", [tx, tag]

    def decode(self, result: str) -> tuple[Any, ...]:
        raw = bytes.fromhex(result[2:] if result.startswith("0x") else result)
        return tuple(decode(list(self.outputs), raw))


@cache
def fn(contract: str, name: str) -> Fn:
    """The (first) function ``name`` of ``contract``'s ABI."""
    for e in load_abi(contract):
        if e.get("type") == "function" and e.get("name") == name:
            return Fn(
                contract,
                name,
                tuple(canonical_type(p) for p in e.get("inputs", [])),
                tuple(canonical_type(p) for p in e.get("outputs", [])),
            )
    raise KeyError(f"{contract}.{name} not in the ABI")


@dataclass(frozen=True)
class ErrorSpec:
    contract: str
    name: str
    types: tuple[str, ...]
    arg_names: tuple[str, ...]

    @property
    def selector(self) -> bytes:
        return keccak(text=f"{self.name}({','.join(self.types)})")[:4]


@cache
def error_specs(contracts: tuple[str, ...] = ("Exchange", "OracleHub")) -> dict[bytes, ErrorSpec]:
    """Custom errors of ``contracts`` by selector (the first contract wins on a shared selector)."""
    out: dict[bytes, ErrorSpec] = {}
    for c in contracts:
        for e in load_abi(c):
            if e.get("type") != "error":
                continue
            spec = ErrorSpec(
                c,
                str(e["name"]),
                tuple(canonical_type(p) for p in e.get("inputs", [])),
                tuple(str(p.get("name") or f"arg{i}") for i, p in enumerate(e.get("inputs", []))),
            )
            out.setdefault(spec.selector, spec)
    return out


def decode_error(data: str | bytes | None) -> tuple[str, dict[str, Any]] | None:
    """(error name, {arg name: value}) of revert data, or None when it is not a known custom error.

    ``Error(string)`` reverts come back as ("Error", {"message": ...}), panics as ("Panic", {"code": n}).
    """
    if data is None:
        return None
    if isinstance(data, str):
        h = data[2:] if data.startswith("0x") else data
        try:
            raw = bytes.fromhex(h)
        except ValueError:
            return None
    else:
        raw = bytes(data)
    if len(raw) < 4:
        return None
    sel, body = raw[:4], raw[4:]
    try:
        if sel == keccak(text="Error(string)")[:4]:
            return "Error", {"message": decode(["string"], body)[0]}
        if sel == keccak(text="Panic(uint256)")[:4]:
            return "Panic", {"code": decode(["uint256"], body)[0]}
        spec = error_specs().get(sel)
        if spec is None:
            return None
        values = decode(list(spec.types), body) if spec.types else ()
    except Exception:  # noqa: BLE001 - malformed revert data is "unknown", never an exception
        return None
    return spec.name, dict(zip(spec.arg_names, values, strict=True))


def batch_calls(calls: Sequence[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
    return list(calls)
