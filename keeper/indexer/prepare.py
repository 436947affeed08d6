"""A fetched range made ready to write, without the database: parse, decode, rows, fold.

A raw answer is parsed and decoded by the compiled scanner (:mod:`keeper.indexer.scan`) when it is
built and the answer is a sound one, else by the Python path below (same result). During a backfill
this runs in worker processes (:func:`prepare_raw`, fed the raw ``eth_getLogs``
answer) so that parsing and decoding leave the writer's core; what comes back is compact and
picklable: ``events`` rows as tuples of wire values (args JSON encoded once, here) and the derived
tables' :class:`~keeper.indexer.derive.Folded` effect. Small ranges (the live tail, tests) run the same
functions in-process. The writer only checks links and sends rows to the database.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from keeper.indexer.decode import DecodeError, EventDecoder, checksum_address
from keeper.indexer.derive import Deriver, Folded, history_columns
from keeper.indexer.records import MAX_BIGINT, LogRecord
from keeper.indexer.scan import scan
from keeper.indexer.spool import Spooled, mapped, write
from keeper.store import packed
from keeper.store.bulk import wire_columns
from keeper.store.models import APPEND_ONLY, EVENTS
from keeper.store.staged import stage_rows

log = logging.getLogger(__name__)

EVENT_COLUMNS = wire_columns(EVENTS)
_EXPECTED = ["chain_id", "block_number", "block_hash", "block_timestamp", "tx_hash", "tx_index", "log_index",
             "address", "contract", "event_name", "account", "market_id", "args"]  # fmt: skip
if EVENT_COLUMNS != _EXPECTED:  # _decode below builds rows in this order
    raise AssertionError(f"events columns changed: {EVENT_COLUMNS}")
#: the tables whose rows a decode worker stages for a SQLite writer (:func:`staged`), and their columns
STAGED_COLUMNS = {"events": EVENT_COLUMNS, **{t.name: history_columns(t.name) for t in APPEND_ONLY}}


@dataclass(frozen=True)
class StagedRows:
    """A range's ``events`` and history rows as a SQLite writer copies them, instead of row tuples: one
    packed buffer per table (``packed``: :mod:`keeper.store.packed`), the same buffers one after another
    in a spool file (``spooled``, their tables and sizes in ``layout``: :mod:`keeper.indexer.spool`), or
    else a serialized SQLite database (``blob``: :mod:`keeper.store.staged`)."""

    events: int  # rows of ``events`` in it
    blob: bytes = b""
    packed: Mapping[str, bytes] | None = None
    spooled: Spooled | None = None
    layout: tuple[tuple[str, int], ...] = ()

    def tables(self, spooled: memoryview) -> dict[str, memoryview]:
        """Table -> its packed buffer, as views of the mapped spool file (``layout`` order)."""
        out, at = {}, 0
        for name, size in self.layout:
            out[name] = spooled[at : at + size]
            at += size
        return out


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
    #: the rows of ``events`` and of ``folded.appends``, staged (both then empty): see :func:`staged`
    staged: StagedRows | None = None

    @property
    def count(self) -> int:
        return self.staged.events if self.staged is not None else len(self.events)


#: how a SQLite writer takes a worker's rows (:attr:`keeper.indexer.writer.IndexStore.rows_as`): packed
#: buffers, a staged database, or (None) the row tuples themselves
RowsAs = Literal["packed", "staged"] | None


def staged(p: Prepared, how: RowsAs = "staged", spool: str | None = None) -> Prepared:
    """``p`` with its ``events`` and history rows moved out of the tuples for a SQLite writer: packed
    (``how``, where :mod:`keeper.store.packed` is built here too) and, given a ``spool`` directory, left
    in a file there if one can be written; else into a staging database."""
    if how is None or p.problem is not None or p.missing_timestamps or p.staged is not None or not p.events:
        return p
    tables = {"events": p.events, **p.folded.appends}
    if how == "packed" and packed.AVAILABLE:
        buffers = {n: packed.pack_rows(rows, len(STAGED_COLUMNS[n])) for n, rows in tables.items() if rows}
        ref = write(spool, list(buffers.values())) if spool is not None else None
        if ref is not None:
            layout = tuple((n, len(b)) for n, b in buffers.items())
            rows = StagedRows(len(p.events), spooled=ref, layout=layout)
        else:
            rows = StagedRows(len(p.events), packed=buffers)
    else:
        rows = StagedRows(len(p.events), blob=stage_rows(STAGED_COLUMNS, tables))
    return Prepared([], Folded({}, p.folded.touches), p.blocks, staged=rows)


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
    d = _decode(logs, None, timestamps, 0, contracts, decoder)
    return d.records, d.missing


@dataclass
class _Decoded:
    records: list[LogRecord]
    rows: list[tuple[Any, ...]]  # their ``events`` wire rows
    blocks: dict[int, str]
    problem: str | None
    missing: list[int]


def _decode(
    logs: Sequence[Mapping[str, Any]],
    span: tuple[int, int] | None,
    timestamps: Mapping[int, int],
    chain_id: int,
    contracts: Mapping[str, str],
    decoder: EventDecoder,
) -> _Decoded:
    """One pass over a range's logs: checks (removed logs, blocks outside ``span``, a block with two
    hashes: the chain changed under the query), records for the deriver and ``events`` rows (the args'
    JSON text straight from the compiled decoders). The hot loop of a backfill: keep it lean."""
    records: list[LogRecord] = []
    rows: list[tuple[Any, ...]] = []
    blocks: dict[int, str] = {}
    missing: set[int] = set()
    by_block: dict[str, tuple[int, str, int | None]] = {}  # blockNumber as sent -> (number, hash, ts)
    addresses: dict[str, tuple[str | None, str]] = {}  # as sent -> (contract, checksummed)
    tx_hashes: dict[str, str] = {}
    last = (-1, -1)
    in_order = True
    for lg in logs:
        bn_hex = lg["blockNumber"]
        blk = by_block.get(bn_hex)
        block_hash = lg["blockHash"].lower()
        if blk is not None and blk[1] == block_hash:
            block_hash = blk[1]  # one string per block and per transaction: pickled once each
        elif blk is None:
            bn = int(bn_hex, 16)
            if span is not None and not span[0] <= bn <= span[1]:
                return _Decoded(
                    [], [], blocks, f"log of block {bn} removed or outside {span[0]}-{span[1]}", []
                )
            if blocks.setdefault(bn, block_hash) != block_hash:
                return _Decoded([], [], blocks, f"logs of block {bn} from two chains", [])
            ts_hex = lg.get("blockTimestamp")
            ts = int(ts_hex, 16) if ts_hex else timestamps.get(bn)
            if ts is None:
                missing.add(bn)
            blk = by_block[bn_hex] = (bn, block_hash, ts)
        elif blk[1] != block_hash:
            return _Decoded([], [], blocks, f"logs of block {blk[0]} from two chains", [])
        bn = blk[0]
        if lg.get("removed"):
            return _Decoded([], [], blocks, f"log of block {bn} removed", [])
        address = lg["address"]
        known = addresses.get(address)
        if known is None:
            known = addresses[address] = (contracts.get(address.lower()), checksum_address(address))
        contract = known[0]
        topics = lg["topics"]
        data = lg["data"]
        li = int(lg["logIndex"], 16)
        spec = None
        if contract is not None and topics:
            spec = decoder.spec_for(topics, contract)
        account = market = None
        if spec is not None:
            try:
                args, text = spec.decode_json(topics, data)
                account = args.get("account")
                market = args.get("marketId")
            except DecodeError as exc:
                log.warning("undecodable log at block %d index %s: %s", bn, li, exc)
                spec = None
        if spec is None:
            args = {"topics": [t.lower() for t in topics], "data": data.lower()}
            text = orjson.dumps(args).decode()
        name = spec.name if spec is not None else None
        tx_hash = lg["transactionHash"].lower()
        tx_hash = tx_hashes.setdefault(tx_hash, tx_hash)
        tx_index = int(lg["transactionIndex"], 16)
        records.append(
            LogRecord(bn, block_hash, blk[2], tx_hash, tx_index, li, known[1], contract, name, args, spec)
        )
        rows.append(
            (
                chain_id, bn, block_hash, blk[2], tx_hash, tx_index, li, known[1], contract, name,
                account if account.__class__ is str else None,
                market if market.__class__ is int and 0 <= market <= MAX_BIGINT else None,
                text,
            )
        )  # fmt: skip
        if in_order:
            here = (bn, li)
            in_order = here > last
            last = here
    if not in_order:  # nodes answer in chain order already
        order = sorted(range(len(records)), key=lambda i: (records[i].block_number, records[i].log_index))
        records = [records[i] for i in order]
        rows = [rows[i] for i in order]
    return _Decoded(records, rows, blocks, None, sorted(missing))


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
    d = _decode(logs, (frm, to), timestamps, chain_id, contracts, decoder)
    if d.problem is not None:
        return Prepared([], Folded({}, {}), d.blocks, d.problem)
    if d.missing:
        return Prepared([], Folded({}, {}), d.blocks, None, tuple(d.missing))
    return Prepared(d.rows, deriver.fold(chain_id, d.records), d.blocks)


# ------------------------------------------------------------------------------ worker side

_STATE: tuple[EventDecoder, Deriver] | None = None


def _state() -> tuple[EventDecoder, Deriver]:
    global _STATE
    if _STATE is None:
        decoder = EventDecoder.for_contracts()
        _STATE = (decoder, Deriver(decoder))
    return _STATE


def watch_parent(pid: int, niceness: int = 0) -> None:
    """Worker initializer: exits this worker once the indexer ``pid`` is gone (after a kill -9 nothing
    else would: a worker holds both ends of its own job pipe, so it never sees an end of file), and
    lowers its priority by ``niceness`` (the keeper's own process first when the CPU is short)."""
    if niceness > 0:
        os.nice(niceness)

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


def parse_raw(raw: bytes | memoryview) -> list[dict[str, Any]] | RawFailure:
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
    raw: bytes | memoryview,
    frm: int,
    to: int,
    timestamps: Mapping[int, int],
    chain_id: int,
    contracts: Mapping[str, str],
    decoder: EventDecoder | None = None,
    deriver: Deriver | None = None,
    native: bool = True,
) -> Prepared | RawFailure:
    """:func:`prepare_logs` of a raw answer (decoder and deriver default to the process's): through the
    compiled scanner (:mod:`keeper.indexer.scan`) when it is built and takes the answer (``native``),
    else the Python path. Both give the same result."""
    if decoder is None or deriver is None:
        decoder, deriver = _state()
    if native:
        scanned = scan(raw, frm, to, timestamps, chain_id, contracts, decoder)
        if scanned is not None:
            records, rows, blocks = scanned
            return Prepared(rows, deriver.fold(chain_id, records), blocks)
    logs = parse_raw(raw)
    if isinstance(logs, RawFailure):
        return logs
    return prepare_logs(logs, frm, to, timestamps, chain_id, contracts, decoder, deriver)


def prepare_in_worker(
    raw: bytes | Spooled,
    frm: int,
    to: int,
    timestamps: Mapping[int, int],
    chain_id: int,
    contracts: Mapping[str, str],
    rows_as: RowsAs = None,
    spool: str | None = None,
) -> Prepared | RawFailure:
    """A decode worker's job: :func:`prepare_raw` with Python's cycle collector paused; for a SQLite
    writer (``rows_as``) the rows come back :func:`staged`. ``raw`` may wait in a spool file, and the
    packed rows go back through one in the ``spool`` directory (:mod:`keeper.indexer.spool`).

    A range is millions of small objects (parsed JSON, records, rows), none of them in a cycle:
    reference counting frees them all, but the collector kept walking them, about 30 % of the parse and
    decode time (2.7 vs 4.0 CPU-s per 209k events). Only in the workers, which do nothing else: in the
    keeper's process the same pause around its writes made the writer slower, not faster.
    """
    gc.disable()
    try:
        if isinstance(raw, Spooled):
            with mapped(raw) as view:
                p = prepare_raw(view, frm, to, timestamps, chain_id, contracts)
        else:
            p = prepare_raw(raw, frm, to, timestamps, chain_id, contracts)
        return staged(p, rows_as, spool) if isinstance(p, Prepared) else p
    finally:
        gc.enable()
