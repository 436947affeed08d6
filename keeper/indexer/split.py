"""An ``eth_getLogs`` answer cut into block-aligned pieces, without parsing it.

A range whose answer holds far more logs than the target (a dense stretch after sparse ones: the span
grew before the density was known) used to be fetched again in smaller ranges, and the node built the
big answer for nothing. Instead the raw answer is cut at block boundaries into pieces of about
``target`` logs, each a complete JSON-RPC answer of its own, decoded by the workers in parallel.

Only the bytes are looked at: the logs array of ``"result"``, each log an object without nested objects
(so the ``{`` before a log's ``"blockNumber"`` opens that log), logs separated by a bare comma, and each
block's logs together, in block order, as nodes send them. An answer laid out otherwise (whitespace
between logs, blocks out of order) is not cut: :func:`split_by_block` returns None and the caller
fetches smaller ranges as before; a block whose number is written otherwise (leading zeros) is only
not a place to cut. Every piece is still checked when decoded (a log outside its piece's blocks is a
problem there), so a wrong cut can cost a fetch, never a log.
"""

from __future__ import annotations

__all__ = ["Piece", "split_by_block"]

_RESULT = b'"result":['
_ENVELOPE = b'{"jsonrpc":"2.0","id":0,"result":['  # a piece is an answer of its own

Piece = tuple[int, int, bytes]  # (from block, to block, a JSON-RPC answer holding their logs)


def split_by_block(raw: bytes, frm: int, to: int, logs: int, target: int) -> list[Piece] | None:
    """``raw`` (the answer to ``eth_getLogs`` over [frm, to], ``logs`` logs) cut into consecutive pieces
    covering [frm, to], about ``target`` logs each (a block is never cut); None when it cannot be cut
    safely or there is nothing to cut."""
    if to <= frm or logs <= target:
        return None
    head = raw.find(_RESULT)
    if head < 0 or raw.find(_RESULT, head + 1) >= 0:
        return None
    start = head + len(_RESULT)  # first byte of the first log
    end = raw.rfind(b"]")  # the logs array's closing bracket: nothing after it holds one
    if end <= start or raw[start : start + 1] != b"{" or raw[end - 1 : end] != b"}":
        return None
    # where each block's logs begin: the "{" of the first log that names it
    begins: list[tuple[int, int]] = []  # (block, offset), in block and offset order
    cursor = start
    for block in range(frm, to + 1):
        at = raw.find(b'"blockNumber":"%s"' % hex(block).encode(), cursor, end)
        if at < 0:
            continue  # no logs in this block (or written otherwise: then the decode check catches it)
        opening = raw.rfind(b"{", cursor, at)
        if opening < 0 or (opening != start and raw[opening - 1 : opening] != b","):
            return None
        if raw.find(b"}", opening, at) >= 0:  # the "{" does not open the log that names this block
            return None
        begins.append((block, opening))
        cursor = at
    if not begins or begins[0][1] != start:
        return None
    # a new piece at the first block after the current one holds the bytes of ``target`` logs; a last
    # piece of less than half that joins the one before
    share = (end - start) * target // logs
    cuts = [0]  # indexes into begins where a piece starts
    for i in range(1, len(begins)):
        if begins[i][1] - begins[cuts[-1]][1] >= share:
            cuts.append(i)
    if len(cuts) > 1 and end - begins[cuts[-1]][1] < share // 2:
        cuts.pop()
    if len(cuts) == 1:
        return None
    pieces: list[Piece] = []
    for k, i in enumerate(cuts):
        first = frm if k == 0 else begins[i][0]
        nxt = cuts[k + 1] if k + 1 < len(cuts) else None
        last = to if nxt is None else begins[nxt][0] - 1
        body_end = end if nxt is None else begins[nxt][1] - 1  # without the comma before the next piece
        pieces.append((first, last, _ENVELOPE + raw[begins[i][1] : body_end] + b"]}"))
    return pieces
