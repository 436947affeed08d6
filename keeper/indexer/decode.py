"""Event decoding without web3's formatters: a table topic0 -> compiled decoder, built from the ABIs.

Static parameters (every event but MarketListed) are read straight from the 32-byte words of the topics
and the data with ``int.from_bytes``: ``uintN``/``intN`` (two's complement, range-checked as the ABI
requires), ``address`` (EIP-55 checksummed, cached), ``bool``, ``bytesN``, and static tuples and
fixed arrays, whose words follow each other in place. Only events with a dynamic parameter (``string``,
``bytes``, ``T[]``, dynamic tuples) go through ``eth_abi`` for their data. Indexed dynamic parameters
are topics holding a hash: they are returned as that hash (``0x`` + 64 hex digits), as web3 does.

Values come out as Python values (``int``, ``bool``, ``str`` addresses, ``0x`` hex for bytes, ``dict``
for tuples keyed by component name, ``list`` for arrays). :meth:`EventSpec.to_json` turns them into
JSON-safe values: integers of more than 48 bits become decimal strings (JSON numbers lose precision
past 2**53), smaller ones (enums, ``uint8``...) stay numbers; :meth:`EventSpec.from_json` inverts it.

A malformed log (wrong topic count, bad padding, out-of-range value) raises :class:`DecodeError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_hash.auto import keccak

from keeper.indexer.abis import INDEXED_CONTRACTS, event_abis

__all__ = [
    "DecodeError",
    "EventDecoder",
    "EventSpec",
    "checksum_address",
    "event_signature",
]

JSON_INT_BITS = 48  # integers wider than this are stored in JSON as decimal strings

_TWO_256 = 1 << 256
_TWO_255 = 1 << 255
_ARRAY_RE = re.compile(r"^(.*)\[(\d*)\]$")


class DecodeError(ValueError):
    """A log that does not match its event's ABI."""


# --------------------------------------------------------------------------------------- addresses


@lru_cache(maxsize=1 << 16)
def _checksum_hex(lower40: str) -> str:
    digest: str = keccak(lower40.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if c > "9" and digest[i] > "7" else c for i, c in enumerate(lower40))


def checksum_address(value: str | int | bytes) -> str:
    """EIP-55 form of an address given as hex text, an int or 20 bytes."""
    if isinstance(value, int):
        return str(_checksum_hex(f"{value:040x}"))
    if isinstance(value, bytes | bytearray):
        return str(_checksum_hex(bytes(value).hex()))
    v = value.lower()
    if v.startswith("0x"):
        v = v[2:]
    if len(v) != 40:
        raise ValueError(f"not an address: {value!r}")
    return _checksum_hex(v)


# --------------------------------------------------------------------------------------- ABI types


def _canonical(param: Mapping[str, Any]) -> str:
    t: str = param["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(_canonical(c) for c in param["components"]) + ")" + t[5:]
    return t


def event_signature(abi: Mapping[str, Any]) -> str:
    return f"{abi['name']}({','.join(_canonical(p) for p in abi['inputs'])})"


def _is_dynamic(param: Mapping[str, Any]) -> bool:
    t = param["type"]
    if t in ("string", "bytes") or t.endswith("[]"):
        return True
    m = _ARRAY_RE.match(t)
    if m:
        return _is_dynamic({**param, "type": m.group(1)})
    if t == "tuple":
        return any(_is_dynamic(c) for c in param["components"])
    return False


def _static_words(param: Mapping[str, Any]) -> int:
    t = param["type"]
    m = _ARRAY_RE.match(t)
    if m:
        return int(m.group(2)) * _static_words({**param, "type": m.group(1)})
    if t == "tuple":
        return sum(_static_words(c) for c in param["components"])
    return 1


def _int_bits(t: str, prefix: str) -> int:
    rest = t[len(prefix) :]
    return int(rest) if rest else 256


# A word reader takes the list of words and a start index and returns a value.
WordReader = Callable[[Sequence[int], int], Any]


def _word_converter(t: str) -> Callable[[int], Any]:
    """Converter of one 32-byte word (as an int) for an elementary static type."""
    if t.startswith("uint"):
        bits = _int_bits(t, "uint")

        def conv_uint(w: int) -> int:
            if w >> bits:
                raise DecodeError(f"{t} out of range")
            return w

        return conv_uint
    if t.startswith("int"):
        bits = _int_bits(t, "int")
        lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)

        def conv_int(w: int) -> int:
            v = w - _TWO_256 if w >= _TWO_255 else w
            if not lo <= v < hi:
                raise DecodeError(f"{t} out of range")
            return v

        return conv_int
    if t == "address":

        def conv_address(w: int) -> str:
            if w >> 160:
                raise DecodeError("address with non-zero padding")
            return _checksum_hex(f"{w:040x}")

        return conv_address
    if t == "bool":

        def conv_bool(w: int) -> bool:
            if w > 1:
                raise DecodeError("bool out of range")
            return w == 1

        return conv_bool
    if t.startswith("bytes") and t != "bytes":
        n = int(t[5:])
        shift = 8 * (32 - n)

        def conv_bytes(w: int) -> str:
            if w & ((1 << shift) - 1):
                raise DecodeError(f"{t} with non-zero padding")
            return "0x" + w.to_bytes(32, "big")[:n].hex()

        return conv_bytes
    raise ValueError(f"unsupported static ABI type {t!r}")


def _static_reader(param: Mapping[str, Any]) -> WordReader:
    """Reader of a static parameter (elementary, static tuple or fixed array) laid out in place."""
    t = param["type"]
    m = _ARRAY_RE.match(t)
    if m:
        inner = {**param, "type": m.group(1)}
        count, width = int(m.group(2)), _static_words(inner)
        read_inner = _static_reader(inner)
        return lambda words, i: [read_inner(words, i + k * width) for k in range(count)]
    if t == "tuple":
        parts: list[tuple[str, WordReader, int]] = []
        off = 0
        for c in param["components"]:
            parts.append((c["name"], _static_reader(c), off))
            off += _static_words(c)
        return lambda words, i: {name: rd(words, i + o) for name, rd, o in parts}
    conv = _word_converter(t)
    return lambda words, i: conv(words[i])


def _topic_reader(conv: Callable[[int], Any]) -> Callable[[str], Any]:
    return lambda topic: conv(int(topic, 16))


# JSON conversions -------------------------------------------------------------------------------


def _json_fn(param: Mapping[str, Any]) -> Callable[[Any], Any] | None:
    """Value -> JSON-safe value (None when the value is already JSON-safe)."""
    t = param["type"]
    m = _ARRAY_RE.match(t)
    if m:
        inner = _json_fn({**param, "type": m.group(1)})
        return None if inner is None else (lambda v: [inner(x) for x in v])
    if t == "tuple":
        fns = [(c["name"], _json_fn(c)) for c in param["components"]]
        if all(f is None for _, f in fns):
            return None
        return lambda v: {k: (f(v[k]) if f is not None else v[k]) for k, f in fns}
    if t.startswith(("uint", "int")) and _int_bits(t, "uint" if t[0] == "u" else "int") > JSON_INT_BITS:
        return str
    return None


def _native_fn(param: Mapping[str, Any]) -> Callable[[Any], Any] | None:
    """JSON value -> Python value (inverse of :func:`_json_fn`)."""
    t = param["type"]
    m = _ARRAY_RE.match(t)
    if m:
        inner = _native_fn({**param, "type": m.group(1)})
        return None if inner is None else (lambda v: [inner(x) for x in v])
    if t == "tuple":
        fns = [(c["name"], _native_fn(c)) for c in param["components"]]
        if all(f is None for _, f in fns):
            return None
        return lambda v: {k: (f(v[k]) if f is not None else v[k]) for k, f in fns}
    if t.startswith(("uint", "int")) and _int_bits(t, "uint" if t[0] == "u" else "int") > JSON_INT_BITS:
        return int
    return None


def _convert_all(
    fns: list[tuple[str, Callable[[Any], Any] | None]], args: Mapping[str, Any]
) -> dict[str, Any]:
    return {k: (f(args[k]) if f is not None else args[k]) for k, f in fns}


# eth_abi results -> our representation -------------------------------------------------------------


def _from_eth_abi_fn(param: Mapping[str, Any]) -> Callable[[Any], Any]:
    t = param["type"]
    m = _ARRAY_RE.match(t)
    if m:
        inner = _from_eth_abi_fn({**param, "type": m.group(1)})
        return lambda v: [inner(x) for x in v]
    if t == "tuple":
        fns = [(c["name"], _from_eth_abi_fn(c)) for c in param["components"]]
        return lambda v: {name: f(x) for (name, f), x in zip(fns, v, strict=True)}
    if t == "address":
        return checksum_address
    if t.startswith("bytes"):
        return lambda v: "0x" + bytes(v).hex()
    return lambda v: v


# --------------------------------------------------------------------------------------- event specs


@dataclass
class EventSpec:
    """One event of one contract, compiled for fast decoding."""

    contract: str
    name: str
    signature: str
    topic0: str
    inputs: list[dict[str, Any]]
    n_topics: int
    _topic_readers: list[tuple[str, Callable[[str], Any]]] = field(default_factory=list, repr=False)
    _data_static: bool = True
    _data_readers: list[tuple[str, WordReader, int]] = field(default_factory=list, repr=False)
    _data_words: int = 0
    _data_types: list[str] = field(default_factory=list, repr=False)
    _data_convs: list[tuple[str, Callable[[Any], Any]]] = field(default_factory=list, repr=False)
    _json_fns: list[tuple[str, Callable[[Any], Any] | None]] = field(default_factory=list, repr=False)
    _native_fns: list[tuple[str, Callable[[Any], Any] | None]] = field(default_factory=list, repr=False)
    _order: list[str] = field(default_factory=list, repr=False)
    _in_order: bool = False

    @classmethod
    def from_abi(cls, contract: str, abi: Mapping[str, Any]) -> EventSpec:
        sig = event_signature(abi)
        inputs = [dict(p) for p in abi["inputs"]]
        for i, p in enumerate(inputs):  # unnamed parameters get positional names, as web3 does not
            if not p.get("name"):
                p["name"] = f"arg{i}"
        indexed = [p for p in inputs if p.get("indexed")]
        data = [p for p in inputs if not p.get("indexed")]
        spec = cls(
            contract=contract,
            name=abi["name"],
            signature=sig,
            topic0="0x" + keccak(sig.encode()).hex(),
            inputs=inputs,
            n_topics=(0 if abi.get("anonymous") else 1) + len(indexed),
        )
        for p in indexed:
            if _is_dynamic(p) or p["type"] == "tuple" or _ARRAY_RE.match(p["type"]):
                spec._topic_readers.append((p["name"], str.lower))
            else:
                spec._topic_readers.append((p["name"], _topic_reader(_word_converter(p["type"]))))
        spec._data_static = not any(_is_dynamic(p) for p in data)
        if spec._data_static:
            off = 0
            for p in data:
                spec._data_readers.append((p["name"], _static_reader(p), off))
                off += _static_words(p)
            spec._data_words = off
        else:
            spec._data_types = [_canonical(p) for p in data]
            spec._data_convs = [(p["name"], _from_eth_abi_fn(p)) for p in data]
        spec._json_fns = [(p["name"], _json_fn(p)) for p in inputs]
        spec._native_fns = [(p["name"], _native_fn(p)) for p in inputs]
        spec._order = [p["name"] for p in inputs]
        spec._in_order = [p["name"] for p in indexed] + [p["name"] for p in data] == spec._order
        return spec

    # ------------------------------------------------------------------------------------ decoding

    def decode(self, topics: Sequence[str], data: str) -> dict[str, Any]:
        """Arguments of a log of this event, in ABI order."""
        if len(topics) != self.n_topics:
            raise DecodeError(f"{self.name}: {len(topics)} topics, expected {self.n_topics}")
        out: dict[str, Any] = {}
        start = self.n_topics - len(self._topic_readers)
        for (name, rd), topic in zip(self._topic_readers, topics[start:], strict=True):
            if len(topic) != 66:
                raise DecodeError(f"{self.name}: malformed topic {topic!r}")
            out[name] = rd(topic)
        raw = bytes.fromhex(data[2:] if data.startswith(("0x", "0X")) else data)
        if self._data_static:
            if len(raw) != 32 * self._data_words:
                raise DecodeError(f"{self.name}: {len(raw)} data bytes, expected {32 * self._data_words}")
            frm = int.from_bytes
            words = [frm(raw[i : i + 32], "big") for i in range(0, len(raw), 32)]
            for name, read, off in self._data_readers:
                out[name] = read(words, off)
        else:
            try:
                values = abi_decode(self._data_types, raw, strict=True)
            except Exception as exc:  # eth_abi raises several types
                raise DecodeError(f"{self.name}: {exc}") from None
            for (name, conv), v in zip(self._data_convs, values, strict=True):
                out[name] = conv(v)
        if len(out) != len(self._order):  # duplicate names (never in our ABIs): keep ABI order anyway
            raise DecodeError(f"{self.name}: duplicate parameter names")
        if self._in_order:  # indexed parameters first (most events): already in ABI order
            return out
        return {k: out[k] for k in self._order}

    def to_json(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return _convert_all(self._json_fns, args)

    def from_json(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return _convert_all(self._native_fns, args)


class EventDecoder:
    """topic0 -> :class:`EventSpec` for a set of contracts (by contract name, then across all)."""

    def __init__(self, abis: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
        self.by_contract: dict[str, dict[tuple[str, int], EventSpec]] = {}
        self.any: dict[tuple[str, int], EventSpec] = {}
        self.by_name: dict[tuple[str, str], EventSpec] = {}
        for contract, abi in abis.items():
            table = self.by_contract.setdefault(contract, {})
            for entry in abi:
                if entry.get("type") != "event" or entry.get("anonymous"):
                    continue
                spec = EventSpec.from_abi(contract, entry)
                table[(spec.topic0, spec.n_topics)] = spec
                self.any.setdefault((spec.topic0, spec.n_topics), spec)
                self.by_name[(contract, spec.name)] = spec

    @classmethod
    def for_contracts(cls, names: Iterable[str] = INDEXED_CONTRACTS) -> EventDecoder:
        return cls({n: event_abis(n) for n in names})

    def spec_for(self, topics: Sequence[str], contract: str | None = None) -> EventSpec | None:
        if not topics:
            return None
        key = (topics[0].lower(), len(topics))
        if contract is not None and contract in self.by_contract:
            return self.by_contract[contract].get(key)  # a known contract: its own ABI only
        return self.any.get(key)

    def decode(
        self, topics: Sequence[str], data: str, contract: str | None = None
    ) -> tuple[EventSpec, dict[str, Any]]:
        """(spec, args) of a log; DecodeError when no event matches or the log is malformed."""
        spec = self.spec_for(topics, contract)
        if spec is None:
            raise DecodeError(f"unknown event topic {topics[0] if topics else None}")
        return spec, spec.decode(topics, data)

    def spec(self, contract: str, name: str) -> EventSpec:
        return self.by_name[(contract, name)]

    def topic0s(self) -> list[str]:
        return sorted({k[0] for k in self.any})
