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

import orjson
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


def _hashed_in_topic(param: Mapping[str, Any]) -> bool:
    """An indexed parameter whose topic holds a hash of its value, not the value (dynamic types, tuples,
    arrays): decoded as that hash, as web3 does."""
    t = param["type"]
    return _is_dynamic(param) or t == "tuple" or _ARRAY_RE.match(t) is not None


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


def _abi_decode() -> Callable[..., Any]:
    """``eth_abi.decode``, imported on first use: only events with dynamic data need it, and it is a
    fifth of the decode workers' start-up (they wait for it before the first range)."""
    from eth_abi import decode

    return decode


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


# --------------------------------------------------------------------------------------- compiled path
#
# Static events (all of ours but MarketListed) also get a function generated from their ABI, compiled
# once: it reads each 32-byte word straight from the hex text (``int(text, 16)``: no bytes objects, no
# per-parameter closures) and builds both the arguments and their JSON text (an f-string, the exact
# text ``orjson.dumps(spec.to_json(args))`` gives) in one pass. It accepts only the well-formed logs a
# node sends (``0x`` data of the exact length, ASCII hex); anything else returns None, and the generic
# path above decodes it or raises the precise DecodeError.

_ADDRESSES: dict[str, str] = {}  # lower-case 40 hex digits -> EIP-55 form (bounded below)
_ZERO24 = "0" * 24


def _address_of(word: str) -> str:
    """EIP-55 address of a 64-hex-digit word (ValueError: dirty padding or not hex)."""
    if word[:24] != _ZERO24:
        raise ValueError("address with non-zero padding")
    low = word[24:].lower()
    a = _ADDRESSES.get(low)
    if a is None:
        int(low, 16)  # not hex: ValueError
        if len(_ADDRESSES) >= 1 << 16:
            _ADDRESSES.clear()
        a = _ADDRESSES[low] = _checksum_hex(low)
    return a


class _Compiler:
    """Source of one static event's fast decoder (see above)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.n = 0

    def var(self) -> str:
        self.n += 1
        return f"v{self.n}"

    def element(self, t: str, word: tuple[str, int]) -> tuple[str, str]:
        """(Python expression of the value, JSON f-string piece) of one word: the 64 hex digits at
        ``word`` = (variable, offset) of the source."""
        v = self.var()
        text = f"{word[0]}[{word[1]}:{word[1] + 64}]"
        add = self.lines.append
        if t.startswith("uint"):
            bits = _int_bits(t, "uint")
            add(f"{v} = _int({text}, 16)")
            if bits < 256:
                add(f"if {v} >> {bits}: return None")
            return v, (f'"{{{v}}}"' if bits > JSON_INT_BITS else f"{{{v}}}")
        if t.startswith("int"):
            bits = _int_bits(t, "int")
            add(f"{v} = _int({text}, 16)")
            add(f"if {v} >= {_TWO_255}: {v} -= {_TWO_256}")
            if bits < 256:
                add(f"if not {-(1 << (bits - 1))} <= {v} < {1 << (bits - 1)}: return None")
            return v, (f'"{{{v}}}"' if bits > JSON_INT_BITS else f"{{{v}}}")
        if t == "address":  # the cache hit inline: most addresses repeat
            src, at = word
            add(f"{v} = _ADDRESSES.get({src}[{at + 24}:{at + 64}]) if {src}.startswith(Z24, {at}) else None")
            add(f"if {v} is None: {v} = _address_of({src}[{at}:{at + 64}])")
            return v, f'"{{{v}}}"'
        if t == "bool":
            add(f"{v} = _int({text}, 16)")
            add(f"if {v} > 1: return None")
            add(f"{v} = {v} == 1")
            add(f"{v}j = 'true' if {v} else 'false'")
            return v, f"{{{v}j}}"
        if t.startswith("bytes") and t != "bytes":
            n = int(t[5:])
            add(f"{v} = {text}.lower()")
            if n < 32:
                add(f"if {v}[{2 * n}:] != {'0' * (64 - 2 * n)!r}: return None")
            add(f"_int({v}, 16)")  # hex only
            add(f"{v} = '0x' + {v}[:{2 * n}]")
            return v, f'"{{{v}}}"'
        raise ValueError(f"unsupported static ABI type {t!r}")

    def static(
        self, param: Mapping[str, Any], word: Callable[[int], tuple[str, int]], at: int
    ) -> tuple[str, str]:
        """(value expression, JSON piece) of a static parameter laid out from word ``at``."""
        t = param["type"]
        m = _ARRAY_RE.match(t)
        if m:
            inner = {**param, "type": m.group(1)}
            width = _static_words(inner)
            parts = [self.static(inner, word, at + k * width) for k in range(int(m.group(2)))]
            return "[" + ", ".join(p[0] for p in parts) + "]", "[" + ",".join(p[1] for p in parts) + "]"
        if t == "tuple":
            vals, jsons, off = [], [], at
            for c in param["components"]:
                pv, pj = self.static(c, word, off)
                vals.append(f"{c['name']!r}: {pv}")
                jsons.append(f'"{c["name"]}":{pj}')
                off += _static_words(c)
            return "{" + ", ".join(vals) + "}", "{{" + ",".join(jsons) + "}}"
        return self.element(t, word(at))


def _compile_fast(spec: EventSpec) -> Callable[[Sequence[str], str], tuple[dict[str, Any], str] | None]:
    """The fast decoder of a static event (see :class:`_Compiler`)."""
    c = _Compiler()
    indexed = [p for p in spec.inputs if p.get("indexed")]
    data = [p for p in spec.inputs if not p.get("indexed")]
    n_data = 2 + 64 * spec._data_words
    # bytes.isalnum: ASCII letters and digits only, and 10x faster than str.isalnum; with the exact
    # length it leaves int(..., 16) nothing but hex digits to read (no sign, "_" or space)
    checks = [f"len(topics) != {spec.n_topics}", f"len(data) != {n_data}", "data[:2] != '0x'"]
    checks.append("not data.encode().isalnum()")
    values: dict[str, tuple[str, str]] = {}
    first = spec.n_topics - len(indexed)
    for k, p in enumerate(indexed):
        tv = f"t{k}"
        c.lines.append(f"{tv} = topics[{first + k}]")
        well_formed = f"len({tv}) == 66 and {tv}[:2] == '0x' and {tv}.encode().isalnum()"
        c.lines.append(f"if not ({well_formed}): return None")
        if _hashed_in_topic(p):
            v = c.var()
            c.lines.append(f"{v} = {tv}.lower()")
            values[p["name"]] = (v, f'"{{{v}}}"')
        else:
            values[p["name"]] = c.element(p["type"], (tv, 2))
    off = 0
    for p in data:
        values[p["name"]] = c.static(p, lambda i: ("data", 2 + 64 * i), off)
        off += _static_words(p)
    args = "{" + ", ".join(f"{name!r}: {values[name][0]}" for name in spec._order) + "}"
    text = "{{" + ",".join(f'"{name}":{values[name][1]}' for name in spec._order) + "}}"
    body = ["if " + " or ".join(checks) + ": return None", "try:"]
    body += ["    " + ln for ln in c.lines]
    body += ["except ValueError: return None", f"return {args}, f{text!r}"]
    src = "def fast(topics, data):\n" + "".join("    " + ln + "\n" for ln in body)
    scope: dict[str, Any] = {
        "_int": int,
        "_address_of": _address_of,
        "_ADDRESSES": _ADDRESSES,
        "Z24": _ZERO24,
    }
    exec(compile(src, f"<{spec.contract}.{spec.name} decoder>", "exec"), scope)  # noqa: S102
    fn: Callable[[Sequence[str], str], tuple[dict[str, Any], str] | None] = scope["fast"]
    return fn


# --------------------------------------------------------------------------------------- native programs
#
# The compiled scanner (keeper/indexer/_scan.c) decodes static events from a program of nodes
# (name, kind, source, bits, children): source >= 0 is a data word, < 0 the topic -1 - source; bits is
# the width of an integer or N of bytesN; children are a tuple's components or an array's elements.

_NATIVE_UINT, _NATIVE_INT, _NATIVE_ADDRESS, _NATIVE_BOOL, _NATIVE_BYTES, _NATIVE_HASH = 1, 2, 3, 4, 5, 6
_NATIVE_TUPLE, _NATIVE_ARRAY = 7, 8


def _native_node(param: Mapping[str, Any], src: int, name: str | None = None) -> tuple[Any, ...]:
    """The node of a static parameter laid out from word ``src`` (or in topic ``-1 - src``)."""
    name = param["name"] if name is None else name
    t = param["type"]
    m = _ARRAY_RE.match(t)
    if m:
        inner = {**param, "type": m.group(1)}
        width = _static_words(inner)
        items = tuple(_native_node(inner, src + i * width, "") for i in range(int(m.group(2))))
        return (name, _NATIVE_ARRAY, src, 0, items)
    if t == "tuple":
        parts, off = [], src
        for c in param["components"]:
            parts.append(_native_node(c, off))
            off += _static_words(c)
        return (name, _NATIVE_TUPLE, src, 0, tuple(parts))
    if t.startswith("uint"):
        return (name, _NATIVE_UINT, src, _int_bits(t, "uint"), ())
    if t.startswith("int"):
        return (name, _NATIVE_INT, src, _int_bits(t, "int"), ())
    if t == "address":
        return (name, _NATIVE_ADDRESS, src, 0, ())
    if t == "bool":
        return (name, _NATIVE_BOOL, src, 0, ())
    if t.startswith("bytes") and t != "bytes":
        return (name, _NATIVE_BYTES, src, int(t[5:]), ())
    raise ValueError(f"unsupported static ABI type {t!r}")


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
    #: the compiled decoder of a static event (see :func:`_compile_fast`); None for dynamic ones
    _fast: Callable[[Sequence[str], str], tuple[dict[str, Any], str] | None] | None = field(
        default=None, repr=False
    )

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
            if _hashed_in_topic(p):
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
        if spec._data_static:
            spec._fast = _compile_fast(spec)
        return spec

    # ------------------------------------------------------------------------------------ decoding

    def decode(self, topics: Sequence[str], data: str) -> dict[str, Any]:
        """Arguments of a log of this event, in ABI order."""
        if self._fast is not None:
            r = self._fast(topics, data)
            if r is not None:
                return r[0]
        return self.decode_generic(topics, data)

    def decode_json(self, topics: Sequence[str], data: str) -> tuple[dict[str, Any], str]:
        """(arguments, their JSON text as stored: ``orjson.dumps(to_json(args))``) of a log."""
        if self._fast is not None:
            r = self._fast(topics, data)
            if r is not None:
                return r
        args = self.decode_generic(topics, data)
        return args, orjson.dumps(self.to_json(args)).decode()

    def decode_generic(self, topics: Sequence[str], data: str) -> dict[str, Any]:
        """:meth:`decode` without the compiled path: any encoding the ABI allows, precise errors."""
        if len(topics) != self.n_topics:
            raise DecodeError(f"{self.name}: {len(topics)} topics, expected {self.n_topics}")
        out: dict[str, Any] = {}
        start = self.n_topics - len(self._topic_readers)
        for (name, rd), topic in zip(self._topic_readers, topics[start:], strict=True):
            if len(topic) != 66:
                raise DecodeError(f"{self.name}: malformed topic {topic!r}")
            try:
                out[name] = rd(topic)
            except ValueError as exc:  # not hex (a DecodeError is a ValueError: kept as it is)
                raise exc if isinstance(exc, DecodeError) else DecodeError(f"{self.name}: {exc}") from None
        try:
            raw = bytes.fromhex(data[2:] if data.startswith(("0x", "0X")) else data)
        except ValueError as exc:
            raise DecodeError(f"{self.name}: data {exc}") from None
        if self._data_static:
            if len(raw) != 32 * self._data_words:
                raise DecodeError(f"{self.name}: {len(raw)} data bytes, expected {32 * self._data_words}")
            frm = int.from_bytes
            words = [frm(raw[i : i + 32], "big") for i in range(0, len(raw), 32)]
            for name, read, off in self._data_readers:
                out[name] = read(words, off)
        else:
            try:
                values = _abi_decode()(self._data_types, raw, strict=True)
            except Exception as exc:  # eth_abi raises several types
                raise DecodeError(f"{self.name}: {exc}") from None
            for (name, conv), v in zip(self._data_convs, values, strict=True):
                out[name] = conv(v)
        if len(out) != len(self._order):  # duplicate names (never in our ABIs): keep ABI order anyway
            raise DecodeError(f"{self.name}: duplicate parameter names")
        if self._in_order:  # indexed parameters first (most events): already in ABI order
            return out
        return {k: out[k] for k in self._order}

    def native_program(self) -> tuple[Any, ...] | None:
        """This event's program for the compiled scanner (:mod:`keeper.indexer.scan`): one node per
        parameter in ABI order, None when its data is dynamic (the scanner then calls
        :meth:`decode_json`). Every data word is read by exactly one node."""
        if not self._data_static:
            return None
        first = self.n_topics - len([p for p in self.inputs if p.get("indexed")])
        nodes: dict[str, tuple[Any, ...]] = {}
        k = 0
        for p in self.inputs:
            if p.get("indexed"):
                src = -1 - (first + k)
                k += 1
                hashed = _hashed_in_topic(p)
                nodes[p["name"]] = (p["name"], _NATIVE_HASH, src, 0, ()) if hashed else _native_node(p, src)
        off = 0
        for p in self.inputs:
            if not p.get("indexed"):
                nodes[p["name"]] = _native_node(p, off)
                off += _static_words(p)
        return tuple(nodes[name] for name in self._order)

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
