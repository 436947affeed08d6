"""An eth_getLogs answer cut into block-aligned pieces (keeper.indexer.split): the pieces hold every
log once, in order, each inside its own blocks, and an answer laid out otherwise is not cut."""

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.indexer.split import split_by_block


def _log(block: int, index: int) -> dict[str, Any]:
    """A log as anvil writes it (its key order; no nested objects)."""
    return {
        "address": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
        "topics": ["0x" + f"{block:064x}", "0x" + f"{index:064x}"],
        "data": "0x" + "00" * 32 * (1 + index % 3),
        "blockHash": "0x" + f"{block:064x}",
        "blockNumber": hex(block),
        "blockTimestamp": hex(1_700_000_000 + block),
        "transactionHash": "0x" + f"{block * 1000 + index:064x}",
        "transactionIndex": hex(index // 2),
        "logIndex": hex(index),
        "removed": False,
    }


def _answer(counts: dict[int, int], **envelope: Any) -> tuple[bytes, list[dict[str, Any]]]:
    logs = [_log(b, i) for b, n in sorted(counts.items()) for i in range(n)]
    return orjson.dumps({"jsonrpc": "2.0", "id": 7, "result": logs, **envelope}), logs


def _check(pieces: list[tuple[int, int, bytes]], frm: int, to: int, logs: list[dict[str, Any]]) -> None:
    assert pieces[0][0] == frm and pieces[-1][1] == to
    got: list[dict[str, Any]] = []
    for (a, b, body), nxt in zip(pieces, [*pieces[1:], None], strict=True):
        assert a <= b
        if nxt is not None:
            assert nxt[0] == b + 1  # consecutive, no gap, no overlap
        part = orjson.loads(body)["result"]
        assert all(a <= int(lg["blockNumber"], 16) <= b for lg in part)
        got += part
    assert got == logs


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.integers(100, 160), st.integers(0, 400), min_size=1, max_size=40),
    st.integers(1, 900),
)
def test_pieces_hold_every_log_once_in_order_within_their_blocks(counts: dict[int, int], target: int) -> None:
    frm, to = 100, 160
    raw, logs = _answer(counts)
    pieces = split_by_block(raw, frm, to, len(logs), target)
    if pieces is None:  # not worth cutting (cutting is by bytes, so a near case may go either way)
        blocks = sorted(n for n in counts.values() if n)
        assert len(logs) <= target or len(blocks) <= 1 or sum(blocks[:-1]) < 3 * target
        return
    _check(pieces, frm, to, logs)
    assert len(pieces) >= 2
    # about ``target`` logs a piece (by bytes: logs differ in size), one block's logs over at most
    for a, b, body in pieces:
        n = len(orjson.loads(body)["result"])
        biggest = max(counts.get(x, 0) for x in range(a, b + 1))
        assert n <= 3 * target + biggest


def test_a_dense_stretch_is_cut_where_its_blocks_begin() -> None:
    counts = {10: 3, 11: 0, 12: 1_500, 13: 1_500, 14: 1_500, 15: 2, 16: 0}
    raw, logs = _answer(counts)
    pieces = split_by_block(raw, 10, 16, len(logs), 1_000)
    assert pieces is not None
    assert [(a, b) for a, b, _ in pieces] == [(10, 12), (13, 13), (14, 16)]
    _check(pieces, 10, 16, logs)


def test_the_envelope_s_key_order_does_not_matter() -> None:
    counts = {5: 50, 6: 50, 7: 50}
    logs = [_log(b, i) for b, n in counts.items() for i in range(n)]
    raw = orjson.dumps({"result": logs, "id": 3, "jsonrpc": "2.0"})
    pieces = split_by_block(raw, 5, 7, len(logs), 50)
    assert pieces is not None
    _check(pieces, 5, 7, logs)


def test_answers_laid_out_otherwise_are_not_cut() -> None:
    counts = {5: 50, 6: 50, 7: 50}
    raw, logs = _answer(counts)
    n = len(logs)
    assert split_by_block(raw, 5, 7, n, 50) is not None
    pretty = orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2)
    assert split_by_block(pretty, 5, 7, n, 50) is None  # whitespace between logs
    spaced = raw.replace(b"},{", b"}, {")
    assert split_by_block(spaced, 5, 7, n, 50) is None
    shuffled = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": logs[50:100] + logs[:50] + logs[100:]})
    assert split_by_block(shuffled, 5, 7, n, 50) is None  # blocks out of order
    nested = raw.replace(b'"removed":false', b'"removed":false,"extra":{"x":1}')
    pieces = split_by_block(nested, 5, 7, n, 50)
    assert pieces is None or all(b'"extra"' in body for _, _, body in pieces)
    error = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"x"}}'
    assert split_by_block(error, 5, 7, n, 50) is None
    assert split_by_block(raw, 5, 7, n, n) is None  # no more logs than the target
    assert split_by_block(raw, 5, 5, n, 10) is None  # one block: cannot be cut


def test_blocks_without_logs_at_either_end_belong_to_the_first_and_last_piece() -> None:
    counts = {21: 40, 22: 40, 23: 40}
    raw, logs = _answer(counts)
    pieces = split_by_block(raw, 18, 27, len(logs), 40)
    assert pieces is not None
    assert pieces[0][0] == 18 and pieces[-1][1] == 27
    _check(pieces, 18, 27, logs)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9))
def test_a_truncated_answer_is_not_cut_or_cut_only_where_every_log_arrived(at: int) -> None:
    """The fault proxy's truncated answers: cut at any byte, the answer is either left whole (and then
    fails to parse, as before) or, truncated after its logs array closed, cut with every log in it."""
    counts = {40: 30, 41: 0, 42: 55, 43: 20, 44: 61}
    raw, logs = _answer(counts)
    cut = raw[: at % len(raw)]
    pieces = split_by_block(cut, 40, 44, len(logs), 30)
    if pieces is not None:
        assert b"}]" in cut  # the logs array had closed
        _check(pieces, 40, 44, logs)
