"""A fetched range made ready to write, without the database: parse, decode, rows, fold.

During a backfill this runs in worker processes (:func:`prepare_raw`, fed the raw ``eth_getLogs``
answer) so that parsing and decoding leave the writer's core; what comes back is compact and
picklable: ``events`` rows as tuples of wire values (args JSON encoded once, here) and the derived
tables' :class:`~keeper.indexer.derive.Folded` effect. Small ranges (the live tail, tests) run the same
functions in-process. The writer only checks links and sends rows to the database.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import orjson

from keeper.indexer.decode import DecodeError, EventDecoder, checksum_address
from keeper.indexer.derive import Deriver, Folded
from keeper.indexer.records import MAX_BIGINT, LogRecord
from keeper.store.bulk import wire_columns
from keeper.store.models import EVENTS

log = logging.getLogger(__name__)

EVENT_COLUMNS = wire_columns(EVENTS)
_EXPECTED = ["chain_id", "block_number", "block_hash", "block_timestamp", "tx_hash", "tx_index", "log_index",
             "address", "contract", "event_name", "account", "market_id", "args"]  # fmt: skip
if EVENT_COLUMNS != _EXPECTED:  # event_wire below builds rows in this order
    raise AssertionError(f"events columns changed: {EVENT_COLUMNS}")


@dataclass
class Prepared:
    """A range's rows, ready to write (see the module docstring)."""

    events: list[tuple[Any, ...]]  # wire rows of ``events`` (EVENT_COLUMNS), in chain order
    folded: Folded
    #: block number -> hash, as the logs carry them (checked against the headers by the caller)
    blocks: dict[int, str]
    #: why the logs cannot be used as they are (a removed log, a block outside the range...): the
    #: chain changed while they were fetched
    problem: str | None = None
    #: blocks whose logs came without ``blockTimestamp`` and whose timestamp was not given: prepare
    #: again with their headers' timestamps
    missing_timestamps: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        return len(self.events)


@dataclass(frozen=True)
class RawFailure:
    """The raw answer holds no list of logs: ``kind`` "rpc" (an error object), "malformed", "not-list"."""

    kind: str
    message: str
    code: int | None = None
    data: Any = None


def decode_logs(
    logs: Sequence[Mapping[str, Any]],
    timestamps: Mapping[int, int],
    contracts: Mapping[str, str],
    decoder: EventDecoder,
) -> tuple[list[LogRecord], list[int]]:
    """LogRecords in chain order (unknown or malformed logs keep raw topics/data), and the blocks
    whose timestamp is missing (neither in the log nor in ``timestamps``)."""
    out: list[LogRecord] = []
    missing: set[int] = set()
    addresses: dict[str, tuple[str | None, str]] = {}  # as sent -> (contract, checksummed)
    for lg in logs:
        bn = int(lg["blockNumber"], 16)
        ts_hex = lg.get("blockTimestamp")
        ts = int(ts_hex, 16) if ts_hex else timestamps.get(bn)
        if ts is None:
            missing.add(bn)
        address = lg["address"]
        known = addresses.get(address)
        if known is None:
            known = addresses[address] = (contracts.get(address.lower()), checksum_address(address))
        contract = known[0]
        topics = lg["topics"]
        data = lg["data"]
        spec = None
        try:
            spec = decoder.spec_for(topics, contract) if contract is not None else None
            args = spec.decode(topics, data) if spec is not None else None
        except DecodeError as exc:
            log.warning("undecodable log at block %d index %s: %s", bn, lg.get("logIndex"), exc)
            spec, args = None, None
        if spec is None or args is None:
            spec, args = None, {"topics": [t.lower() for t in topics], "data": data.lower()}
        out.append(
            LogRecord(
                bn,
                lg["blockHash"].lower(),
                ts,
                lg["transactionHash"].lower(),
                int(lg["transactionIndex"], 16),
                int(lg["logIndex"], 16),
                known[1],
                contract,
                spec.name if spec is not None else None,
                args,
                spec,
            )
        )
    out.sort(key=attrgetter("block_number", "log_index"))  # nodes answer in this order already
    return out, sorted(missing)


def event_wire(r: LogRecord, chain_id: int) -> tuple[Any, ...]:
    """The ``events`` row of a record, as wire values (args as JSON text: wide ints as strings)."""
    if r.spec is not None:
        account = r.args.get("account")
        market = r.args.get("marketId")
        args = r.spec.to_json(r.args)
    else:
        account = market = None
        args = r.args
    return (
        chain_id,
        r.block_number,
        r.block_hash,
        r.block_timestamp,
        r.tx_hash,
        r.tx_index,
        r.log_index,
        r.address,
        r.contract,
        r.event_name,
        account if isinstance(account, str) else None,
        market if isinstance(market, int) and 0 <= market <= MAX_BIGINT else None,
        orjson.dumps(args).decode(),
    )


def check_logs(logs: Sequence[Mapping[str, Any]], frm: int, to: int) -> tuple[dict[int, str], str | None]:
    """(block -> hash of its logs, a problem or None): removed logs, blocks outside [frm, to], and one
    block seen with two hashes mean the chain changed under the query."""
    blocks: dict[int, str] = {}
    for lg in logs:
        bn = int(lg["blockNumber"], 16)
        if lg.get("removed") or not frm <= bn <= to:
            return blocks, f"log of block {bn} removed or outside {frm}-{to}"
        h = lg["blockHash"].lower()
        if blocks.setdefault(bn, h) != h:
            return blocks, f"logs of block {bn} from two chains"
    return blocks, None


def prepare_logs(
    logs: Sequence[Mapping[str, Any]],
    frm: int,
    to: int,
    timestamps: Mapping[int, int],
    chain_id: int,
    contracts: Mapping[str, str],
    decoder: EventDecoder,
    deriver: Deriver,
) -> Prepared:
    blocks, problem = check_logs(logs, frm, to)
    if problem is not None:
        return Prepared([], Folded({}, {}), blocks, problem)
    records, missing = decode_logs(logs, timestamps, contracts, decoder)
    if missing:
        return Prepared([], Folded({}, {}), blocks, None, tuple(missing))
    return Prepared([event_wire(r, chain_id) for r in records], deriver.fold(chain_id, records), blocks)


# ------------------------------------------------------------------------------ worker side

_STATE: tuple[EventDecoder, Deriver] | None = None


def _state() -> tuple[EventDecoder, Deriver]:
    global _STATE
    if _STATE is None:
        decoder = EventDecoder.for_contracts()
        _STATE = (decoder, Deriver(decoder))
    return _STATE


def watch_parent(pid: int) -> None:
    """Worker initializer: exits this worker once the indexer ``pid`` is gone (after a kill -9 nothing
    else would: a worker holds both ends of its own job pipe, so it never sees an end of file)."""

    def run() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # alive, and another user's (cannot happen for our parent)
                pass

    threading.Thread(target=run, name="watch-parent", daemon=True).start()


def warm_up() -> int:
    """Builds the decoder of a fresh worker (submitted when the pool starts, hidden behind fetching)."""
    return len(_state()[0].any)


def parse_raw(raw: bytes) -> list[dict[str, Any]] | RawFailure:
    """The logs of a raw ``eth_getLogs`` JSON-RPC answer, or why there are none."""
    try:
        reply = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return RawFailure("malformed", f"malformed JSON ({len(raw)} bytes)")
    if not isinstance(reply, dict):
        return RawFailure("malformed", f"unexpected answer to eth_getLogs: {str(reply)[:200]}")
    err = reply.get("error")
    if err is not None:
        if isinstance(err, dict):
            return RawFailure("rpc", str(err.get("message", "")), err.get("code"), err.get("data"))
        return RawFailure("rpc", str(err))
    if "result" not in reply:
        return RawFailure("malformed", "answer to eth_getLogs without result")
    result = reply["result"]
    if not isinstance(result, list):
        return RawFailure("not-list", f"eth_getLogs answered {type(result).__name__}, not a list")
    return result


def prepare_raw(
    raw: bytes,
    frm: int,
    to: int,
    timestamps: Mapping[int, int],
    chain_id: int,
    contracts: Mapping[str, str],
    decoder: EventDecoder | None = None,
    deriver: Deriver | None = None,
) -> Prepared | RawFailure:
    """:func:`prepare_logs` of a raw answer (the worker's job; decoder and deriver are the process's)."""
    logs = parse_raw(raw)
    if isinstance(logs, RawFailure):
        return logs
    if decoder is None or deriver is None:
        decoder, deriver = _state()
    return prepare_logs(logs, frm, to, timestamps, chain_id, contracts, decoder, deriver)
