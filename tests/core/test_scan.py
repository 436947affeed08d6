"""The compiled scanner (keeper.indexer.scan, keeper/indexer/_scan.c) against the Python path it speeds up.

A raw eth_getLogs answer goes through ``prepare_raw`` twice, with and without the scanner: the results
(events rows, block hashes, folded history and state, the problem or missing timestamps) must be equal,
types included. Answers are generated from every event of our ABIs and a synthetic ABI with the types
ours do not use (small ints, bytesN, fixed arrays, nested tuples, dynamic data), laid out as nodes write
them or otherwise (key order, whitespace, extra keys, upper-case hex), and spoiled in the ways a node or
a reorg can spoil them. A sound answer must be taken by the scanner, not left to the Python path.
"""

from __future__ import annotations

import random
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_decode import ALL_EVENTS, CONTRACTS, SYNTHETIC_ABI, _encode_log, _event_values, _is_dynamic

from keeper.indexer import scan
from keeper.indexer.abis import event_abis
from keeper.indexer.decode import EventDecoder, EventSpec
from keeper.indexer.derive import Deriver
from keeper.indexer.prepare import Prepared, RawFailure, prepare_raw

CHAIN_ID = 31337
FRM, TO = 1000, 1040
#: one address per contract, lower-case (as IndexTarget.contracts keys them)
ADDRESSES = {
    f"0x{i + 1:040x}" if i % 2 else f"0x{'ab' * 19}{i:02x}": c
    for i, c in enumerate((*CONTRACTS, "Synthetic"))
}
BY_CONTRACT = {c: a for a, c in ADDRESSES.items()}
#: events we can generate (an indexed dynamic parameter is a hash: not encoded by _encode_log)
EVENTS = [(c, e) for c, e in ALL_EVENTS if not any(p.get("indexed") and _is_dynamic(p) for p in e["inputs"])]
#: values of a key the scanner skips: valid JSON, and what a JSON reader must refuse (a control character
#: in a string, invalid UTF-8, a bad literal, numbers the grammar forbids)
ENVELOPE_VALUES = [
    b'"a\x01b"', b"tru", b"nul", b"01", b"1.", b".5", b"+1", b'"\xff"', b'"\xc3\xa9"',
    b"1.5e3", b"-0", b"[1,{\"a\":null},true]", b'"\\u00e9"',
]  # fmt: skip
SPOILS = [
    "none", "removed", "outside", "two-hashes", "out-of-order", "duplicate", "no-timestamp",
    "unknown-topic", "unknown-address", "bad-word", "short-data", "upper-hash", "upper-topic0",
    "escaped", "error-answer", "null-result", "bad-words", "bad-topics", "dup-topics", "odd-envelope",
    "padded-number",
]  # fmt: skip


@pytest.fixture(scope="module")
def decoder() -> EventDecoder:
    return EventDecoder({"Synthetic": SYNTHETIC_ABI, **{c: event_abis(c) for c in CONTRACTS}})


@pytest.fixture(scope="module")
def deriver(decoder: EventDecoder) -> Deriver:
    return Deriver(decoder)  # its fold keeps no state from one range to the next


def test_the_scanner_is_built() -> None:
    """`make setup` builds the C module; without it every other test here would compare the Python path
    with itself."""
    assert scan.AVAILABLE, "keeper/indexer/_scan.c is not built: run `make setup` (needs a C compiler)"


@st.composite
def answers(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Logs of a sound range in chain order, and the blocks' timestamps."""
    blocks = sorted(draw(st.sets(st.integers(FRM, TO), min_size=1, max_size=6)))
    logs: list[dict[str, Any]] = []
    stamps = {b: 1_700_000_000 + 12 * b for b in blocks}
    for b in blocks:
        bhash = "0x" + random.Random(b).randbytes(32).hex()
        li = draw(st.integers(0, 3))
        for t in range(draw(st.integers(1, 3))):
            tx = "0x" + random.Random(b * 100 + t).randbytes(32).hex()
            for _ in range(draw(st.integers(1, 3))):
                contract, abi = draw(st.sampled_from(EVENTS))
                values = draw(_event_values(abi))
                spec = EventSpec.from_abi(contract, abi)
                topics, data = _encode_log(abi, values, spec.topic0)
                logs.append(
                    {
                        "address": BY_CONTRACT[contract],
                        "topics": topics,
                        "data": data,
                        "blockHash": bhash,
                        "blockNumber": hex(b),
                        "blockTimestamp": hex(stamps[b]),
                        "transactionHash": tx,
                        "transactionIndex": hex(t),
                        "logIndex": hex(li),
                        "removed": False,
                    }
                )
                li += draw(st.integers(1, 2))
    return logs, stamps


def _spoil(logs: list[dict[str, Any]], how: str, pick: int) -> None:
    lg = logs[pick % len(logs)]
    if how == "removed":
        lg["removed"] = True
    elif how == "outside":
        lg["blockNumber"] = hex(TO + 1)
    elif how == "two-hashes":
        lg["blockHash"] = "0x" + "ee" * 32
        if len(logs) == 1 or all(x["blockNumber"] != lg["blockNumber"] for x in logs if x is not lg):
            logs.append({**lg, "blockHash": "0x" + "dd" * 32, "logIndex": hex(int(lg["logIndex"], 16) + 1)})
    elif how == "out-of-order" and len(logs) > 1:
        logs.reverse()
    elif how == "duplicate":
        logs.append(dict(lg))
    elif how == "no-timestamp":
        del lg["blockTimestamp"]
    elif how == "unknown-topic":
        lg["topics"] = ["0x" + "12" * 32, *lg["topics"][1:]]
    elif how == "unknown-address":
        lg["address"] = "0x" + "99" * 20
    elif how == "bad-word":  # a word out of its type's range (padding, bool > 1, ...) or not hex
        if len(lg["data"]) > 2:
            lg["data"] = "0x" + "ff" + lg["data"][4:]
        elif len(lg["topics"]) > 1:
            lg["topics"] = [*lg["topics"][:-1], "0x" + "zz" * 32]
    elif how in ("bad-words", "bad-topics"):  # in every log, a data word or its last topic out of range
        # for some type: a bool (2), an int8 or int16 (sign bit above the width), an address (padding)
        word = f"{[2, 0x80, 0x8000, 1 << 160, 1 << 255][pick % 5]:064x}"
        for x in logs:
            words = (len(x["data"]) - 2) // 64
            if how == "bad-topics" and len(x["topics"]) > 1:
                x["topics"] = [*x["topics"][:-1], "0x" + word]
            elif how == "bad-words" and words:
                at = 2 + 64 * (pick // 5 % words)
                x["data"] = x["data"][:at] + word + x["data"][at + 64 :]
    elif how == "padded-number":  # "0x0a" for block 10, and another timestamp: a reader of text tells
        # them apart (the Python path takes each form's first timestamp)
        lg["blockNumber"] = "0x0" + lg["blockNumber"][2:]
        lg["blockTimestamp"] = hex(int(lg["blockTimestamp"], 16) + 1)
    elif how == "short-data" and len(lg["data"]) > 2:
        lg["data"] = lg["data"][:-64]
    elif how == "upper-hash":
        lg["blockHash"] = lg["blockHash"].upper().replace("0X", "0x")
    elif how == "upper-topic0":
        lg["topics"] = [lg["topics"][0].upper().replace("0X", "0x"), *lg["topics"][1:]]


def _layout(logs: list[dict[str, Any]], style: int, how: str) -> bytes:
    if style % 3 == 1:  # another node's key order, and a key we do not know
        logs = [{"extra": {"a": [1, 2.5, None]}, **dict(reversed(list(lg.items())))} for lg in logs]
    if style % 2 == 1:  # upper-case hex where a node may send it: addresses and data words
        for lg in logs:
            lg["address"] = "0x" + lg["address"][2:].upper()
            lg["data"] = "0x" + lg["data"][2:].upper()
    if how == "escaped" and logs:
        logs[0]["transactionHash"] = "0x\u00e9" + logs[0]["transactionHash"][3:]
    reply: dict[str, Any] = {"jsonrpc": "2.0", "id": 3, "result": logs}
    if how == "error-answer":
        reply = {
            "jsonrpc": "2.0",
            "id": 3,
            "error": {"code": -32005, "message": "query returned more than 10000 results"},
        }
    elif how == "null-result":
        reply["result"] = None
    raw = orjson.dumps(reply, option=orjson.OPT_INDENT_2 if style % 5 == 4 else 0)
    if how == "odd-envelope":  # a key we skip, holding valid or invalid JSON: both paths must agree
        raw = b'{"x":' + ENVELOPE_VALUES[style % len(ENVELOPE_VALUES)] + b"," + raw[1:]
    if how == "dup-topics":  # the first log's topics split over two keys: a JSON reader keeps the last
        raw = re.sub(rb'("topics":\s*\[\s*"0x[0-9a-fA-F]{64}")\s*,', rb'\1],"topics":[', raw, count=1)
    return raw


def _same(a: Prepared | RawFailure, b: Prepared | RawFailure) -> None:
    """Equal, types included (repr tells True from 1 and "1" from 1)."""
    assert repr(a) == repr(b)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers(), st.sampled_from(SPOILS), st.integers(0, 50), st.integers(0, 29), st.booleans())
def test_scanner_equals_python_path(
    decoder: EventDecoder,
    deriver: Deriver,
    answer: tuple[list[dict[str, Any]], dict[int, int]],
    how: str,
    pick: int,
    style: int,
    give_timestamps: bool,
) -> None:
    logs, stamps = answer
    _spoil(logs, how, pick)
    raw = _layout(logs, style, how)
    ts = stamps if give_timestamps else {}
    native = prepare_raw(raw, FRM, TO, ts, CHAIN_ID, ADDRESSES, decoder, deriver, native=True)
    python = prepare_raw(raw, FRM, TO, ts, CHAIN_ID, ADDRESSES, decoder, deriver, native=False)
    _same(native, python)
    if how == "none" and style % 2 == 0:  # a sound answer as nodes write it: the scanner takes it
        assert scan.scan(raw, FRM, TO, ts, CHAIN_ID, ADDRESSES, decoder) is not None


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.lists(st.sampled_from([b'"logIndex"', b'"logIndex', b'logIndex"', b"x"])))
def test_logs_are_counted_as_bytes_count_counts_them(noise: bytes, parts: list[bytes]) -> None:
    """count_logs (memmem in C) sizes ranges and decides cuts: it must count exactly as bytes.count,
    also for keys that overlap, stand at either end, or are cut short."""
    raw = noise.join(parts) + noise
    assert scan.count_logs(raw) == raw.count(b'"logIndex"')
    assert scan.count_logs(b'"logIndex""logIndex"') == 2
    assert scan.count_logs(b'"logIndex"'[:-1]) == 0


def test_a_node_answer_is_counted_by_its_logs(answer_bytes: bytes) -> None:
    assert scan.count_logs(answer_bytes) == len(orjson.loads(answer_bytes)["result"]) > 0


@pytest.fixture
def answer_bytes() -> bytes:
    logs = [{"logIndex": hex(i), "data": "0x" + "00" * 32, "removed": False} for i in range(5)]
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": logs}, option=orjson.OPT_INDENT_2)


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_sound_answer_is_scanned_exactly(
    decoder: EventDecoder, deriver: Deriver, draws: st.DataObject
) -> None:
    """One answer of every event, through the scanner itself: its records equal the Python path's."""
    rng = random.Random(7)
    logs: list[dict[str, Any]] = []
    for i, (contract, abi) in enumerate(EVENTS):
        spec = EventSpec.from_abi(contract, abi)
        values = draws.draw(_event_values(abi))
        topics, data = _encode_log(abi, values, spec.topic0)
        logs.append(
            {
                "address": BY_CONTRACT[contract],
                "topics": topics,
                "data": data,
                "blockHash": "0x" + rng.randbytes(32).hex() if i % 4 == 0 else logs[-1]["blockHash"],
                "blockNumber": hex(FRM + i // 4),
                "blockTimestamp": hex(1_700_000_000 + i // 4),
                "transactionHash": "0x" + rng.randbytes(32).hex(),
                "transactionIndex": hex(i % 4),
                "logIndex": hex(i % 4),
                "removed": False,
            }
        )
    raw = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": logs})
    got = scan.scan(raw, FRM, TO, {}, CHAIN_ID, ADDRESSES, decoder)
    assert got is not None
    records, rows, blocks = got
    python = prepare_raw(raw, FRM, TO, {}, CHAIN_ID, ADDRESSES, decoder, deriver, native=False)
    assert isinstance(python, Prepared)
    assert repr(rows) == repr(python.events)
    assert blocks == python.blocks
    assert len(records) == len(EVENTS)
    for r, (contract, abi) in zip(records, EVENTS, strict=True):
        assert (r.contract, r.event_name) == (contract, abi["name"])
        assert r.spec is decoder.by_name[(contract, abi["name"])]


#: words at the edges of every static type: bools, small ints and their sign bits, address padding,
#: two's complement fills, the largest words, and each byte's lowest bit (the padding of bytesN)
EDGES = sorted(
    {1 << (8 * n) for n in range(32)}
    | {
        v % (1 << 256)
        for b in (8, 16, 64, 128, 160, 255, 256)
        for v in (1 << b, (1 << b) - 1, -(1 << b), -(1 << b) - 1)
    }
    | {
        0,
        1,
        2,
        0x7F,
        0x80,
        0x8000,
        1 << 63,
        (1 << 256) - 1,
        (1 << 256) - 0x80,
        (1 << 256) - 0x81,
        (0xAB << 248),
    }
)


def _single_log(contract: str, topics: list[str], data: str) -> dict[str, Any]:
    """The one log of block FRM's one transaction."""
    return {
        "address": BY_CONTRACT[contract],
        "topics": topics,
        "data": data,
        "blockHash": "0x" + "11" * 32,
        "blockNumber": hex(FRM),
        "blockTimestamp": hex(1_700_000_000),
        "transactionHash": "0x" + "22" * 32,
        "transactionIndex": "0x0",
        "logIndex": "0x0",
        "removed": False,
    }


def _answer_of(*logs: dict[str, Any]) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": list(logs)})


def test_every_word_at_the_edges_of_its_type(decoder: EventDecoder, deriver: Deriver) -> None:
    """Each static event with every data word and every indexed topic in turn at each edge value (the
    others zero, valid for every static type): the scanner and the Python path agree on all of them."""
    checked = scanned = 0
    for contract, abi in EVENTS:
        spec = decoder.by_name[(contract, abi["name"])]
        if spec.native_program() is None:
            continue
        words = spec._data_words
        for where in [("data", i) for i in range(words)] + [("topic", k) for k in range(1, spec.n_topics)]:
            for value in EDGES:
                topics = [spec.topic0] + ["0x" + "00" * 32] * (spec.n_topics - 1)
                data = ["00" * 32] * words
                if where[0] == "data":
                    data[where[1]] = f"{value:064x}"
                else:
                    topics[where[1]] = f"0x{value:064x}"
                raw = _answer_of(_single_log(contract, topics, "0x" + "".join(data)))
                native = prepare_raw(raw, FRM, TO, {}, CHAIN_ID, ADDRESSES, decoder, deriver)
                python = prepare_raw(raw, FRM, TO, {}, CHAIN_ID, ADDRESSES, decoder, deriver, native=False)
                _same(native, python)
                checked += 1
                scanned += scan.scan(raw, FRM, TO, {}, CHAIN_ID, ADDRESSES, decoder) is not None
    assert checked > 3000
    assert scanned > checked // 4  # most edges are in range for most types: the scanner takes those


@pytest.mark.parametrize("value", ENVELOPE_VALUES, ids=[v.decode("latin-1") for v in ENVELOPE_VALUES])
def test_json_the_reader_refuses_is_refused(decoder: EventDecoder, deriver: Deriver, value: bytes) -> None:
    """A sound answer with a key the scanner skips: where the JSON reader refuses the value, the answer is
    malformed on both paths; where it accepts it, both decode the logs."""
    contract, abi = next((c, e) for c, e in EVENTS if e["name"] == "Deposited")
    spec = decoder.by_name[(contract, abi["name"])]
    topics = [spec.topic0] + ["0x" + "00" * 32] * (spec.n_topics - 1)
    log = _single_log(contract, topics, "0x" + "00" * 32 * spec._data_words)
    raw = b'{"x":' + value + b"," + _answer_of(log)[1:]
    try:
        orjson.loads(raw)
        valid = True
    except orjson.JSONDecodeError:
        valid = False
    native = prepare_raw(raw, FRM, TO, {}, CHAIN_ID, ADDRESSES, decoder, deriver)
    python = prepare_raw(raw, FRM, TO, {}, CHAIN_ID, ADDRESSES, decoder, deriver, native=False)
    _same(native, python)
    assert isinstance(native, Prepared if valid else RawFailure)
