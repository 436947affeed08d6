"""The compiled scanner: a raw ``eth_getLogs`` answer straight to records and ``events`` rows, in C.

:mod:`keeper.indexer.prepare`'s Python path parses the answer with orjson, then reads every log's fields
and words in Python: about 7 us a log, half of a decode worker's CPU during a backfill. The C module
``keeper/indexer/_scan.c`` (built by ``make setup``, see ``setup.py``) does the same on the answer's bytes
and builds the same objects. It takes only the answers a node sends for a sound range and returns None
for anything else (a removed log, a block outside the range, logs out of order, a missing timestamp, an
unknown event, a malformed word, JSON it does not read): the caller then runs the Python path, which
says what is wrong or decodes the odd log exactly as before. ``tests/core/test_scan.py`` compares both.

Without a C compiler the module is not built and :data:`AVAILABLE` is False: the indexer runs the Python
path alone: the same results for about twice the parsing and decoding CPU (one line in its log says
so). docs/benchmarks.md has the figures, and why two workers on 2 cores hide the difference.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from keeper.indexer import decode
from keeper.indexer.decode import EventDecoder
from keeper.indexer.records import LogRecord

try:
    from keeper.indexer import _scan  # type: ignore[attr-defined]
except ImportError:  # not built (no C compiler): the Python path alone
    _scan = None

__all__ = ["AVAILABLE", "Scanned", "count_logs", "scan"]

#: whether the C module is built and loaded
AVAILABLE = _scan is not None

#: records (chain order), their ``events`` rows, block number -> hash
Scanned = tuple[list[LogRecord], list[tuple[Any, ...]], dict[int, str]]

_PROGRAMS: weakref.WeakKeyDictionary[EventDecoder, dict[str, dict[str, tuple[Any, ...]]]] = (
    weakref.WeakKeyDictionary()
)


def programs(decoder: EventDecoder) -> dict[str, dict[str, tuple[Any, ...]]]:
    """contract -> topic0 -> (topics, spec, name, program, data words), for the scanner.

    A topic0 that two events of one contract share (with different indexed parameters) is left out: the
    scanner then hands those logs to the Python path, which tells them apart by their topic count.
    """
    tables = _PROGRAMS.get(decoder)
    if tables is None:
        tables = {}
        for contract, specs in decoder.by_contract.items():
            table: dict[str, tuple[Any, ...]] = {}
            shared: set[str] = set()
            for (topic0, n_topics), spec in specs.items():
                if topic0 in table:
                    shared.add(topic0)
                table[topic0] = (n_topics, spec, spec.name, spec.native_program(), spec._data_words)
            tables[contract] = {t: e for t, e in table.items() if t not in shared}
        _PROGRAMS[decoder] = tables
    return tables


#: a log's contract address (lower case) in EIP-55 form: asked once per change of contract between
#: consecutive logs, which alternate between a handful of contracts (some 200,000 calls per 200,000 logs)
_contract_address = lru_cache(maxsize=1024)(decode.checksum_address)


def scan(
    raw: bytes | memoryview,
    frm: int,
    to: int,
    timestamps: Mapping[int, int],
    chain_id: int,
    contracts: Mapping[str, str],
    decoder: EventDecoder,
) -> Scanned | None:
    """The records, rows and block hashes of ``raw`` for blocks ``frm``-``to``, as the Python path
    builds them; None when the scanner is not built or leaves this answer to the Python path."""
    if _scan is None:
        return None
    result: Scanned | None = _scan.scan(
        raw,
        frm,
        to,
        timestamps,
        chain_id,
        contracts if isinstance(contracts, dict) else dict(contracts),
        programs(decoder),
        LogRecord,
        decode._ADDRESSES,
        decode._address_of,
        _contract_address,
    )
    return result


def count_logs(raw: bytes | memoryview) -> int:
    """How many logs an ``eth_getLogs`` answer holds, without parsing it (the occurrences of
    ``"logIndex"``): what sizes the next range and decides whether an answer is cut in pieces. In C when
    built (memmem, twice the speed of ``bytes.count`` on the event loop's thread: 177 MB per backfill of
    the bench chain), else ``bytes.count``; the same number either way."""
    if _scan is None:
        return bytes(raw).count(b'"logIndex"')
    n: int = _scan.count_logs(raw)
    return n
