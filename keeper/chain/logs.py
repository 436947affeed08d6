"""``eth_getLogs``, and what providers answer when it asks for too much.

Alchemy, Infura, QuickNode, Ankr, Erigon/Geth limits, code -32005, HTTP 413, timeouts and truncated
answers: :func:`classify_range_error` turns each into a :class:`RangeTooLarge` (with the suggested range
or the maximum span when the message gives one), so that the indexer asks for fewer blocks instead of
retrying the same query. :func:`get_logs` and :func:`get_logs_raw` raise it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

from keeper.chain.rpc import RpcClient, RpcError, RpcTransportError

__all__ = ["RangeTooLarge", "classify_range_error", "get_logs", "get_logs_raw"]


class RangeTooLarge(Exception):
    """The node refused a log query as too large; ``suggested`` is (from, to) or ``max_blocks`` a span."""

    def __init__(
        self, reason: str, suggested: tuple[int, int] | None = None, max_blocks: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.suggested = suggested
        self.max_blocks = max_blocks

    def __str__(self) -> str:
        return self.reason


_RANGE_MESSAGES = (
    "log response size exceeded",
    "query returned more than",
    "exceed maximum block range",
    "exceeds maximum block range",
    "block range is too wide",
    "block range too wide",
    "range is too large",
    "block range too large",
    "block range is too large",
    "response size exceeds",
    "response size exceeded",
    "response is too big",
    "limit exceeded",
    "query timeout exceeded",
    "too many blocks",
    "too many results",
    "more than 10000 results",
    "is limited to",
    "ranges over",
    "max results",
    "results exceed",
    "logs exceed",
    "block range",
    "query exceeds",
    "timeout",
    "timed out",
    "payload too large",
)
_SUGGESTED_RANGE = re.compile(r"\[\s*(0x[0-9a-fA-F]+|\d+)\s*,\s*(0x[0-9a-fA-F]+|\d+)\s*\]")
_MAX_SPAN = (
    re.compile(
        r"(?:maximum|max)\s+(?:block\s+)?range(?:\s+(?:is|of|allowed))?\s*(?:[:=]|is)?\s*([\d,_]+)", re.I
    ),
    re.compile(r"limited to (?:a |an )?([\d,_]+)(?:[ -]block)? range", re.I),
    re.compile(r"ranges? (?:over|of more than|greater than|larger than|exceeding) ([\d,_]+) blocks", re.I),
    re.compile(r"block range (?:exceeds|greater than|larger than|over|limit(?: of)?)\s*:?\s*([\d,_]+)", re.I),
    re.compile(r"(?:up to|at most) ([\d,_]+) blocks", re.I),
)


def _int(text: str) -> int:
    text = text.replace(",", "").replace("_", "")
    return int(text, 16) if text.startswith(("0x", "0X")) else int(text)


def classify_range_error(err: RpcError | RpcTransportError) -> RangeTooLarge | None:
    """A RangeTooLarge when ``err`` means "ask for fewer blocks", else None."""
    if isinstance(err, RpcTransportError):
        if err.timeout or err.malformed:
            return RangeTooLarge(f"log query failed ({err}): shrinking the range")
        if err.status in (413, 502, 503, 504):
            return RangeTooLarge(f"log query failed with HTTP {err.status}: shrinking the range")
        return None
    text = err.message or ""
    if err.data is not None:
        text = f"{text} {err.data if isinstance(err.data, str) else orjson.dumps(err.data).decode()}"
    lower = text.lower()
    if err.code != -32005 and not any(m in lower for m in _RANGE_MESSAGES):
        return None
    data = err.data
    if isinstance(data, dict) and isinstance(data.get("from"), str) and isinstance(data.get("to"), str):
        try:  # Infura: {"from": "0x..", "to": "0x..", "limit": 10000}
            a, b = _int(data["from"]), _int(data["to"])
            if b >= a:
                return RangeTooLarge(text, suggested=(a, b))
        except ValueError:
            pass
    m = _SUGGESTED_RANGE.search(text)
    if m:
        a, b = _int(m.group(1)), _int(m.group(2))
        if b >= a:
            return RangeTooLarge(text, suggested=(a, b))
    for rx in _MAX_SPAN:
        m = rx.search(text)
        if m:
            n = _int(m.group(1))
            if n > 0:
                return RangeTooLarge(text, max_blocks=n)
    return RangeTooLarge(text)


def _query(from_block: int, to_block: int, addresses: Sequence[str]) -> list[Any]:
    return [{"fromBlock": hex(from_block), "toBlock": hex(to_block), "address": list(addresses)}]


async def get_logs(
    rpc: RpcClient, from_block: int, to_block: int, addresses: Sequence[str]
) -> list[dict[str, Any]]:
    """``eth_getLogs`` over [from_block, to_block]; RangeTooLarge when the node asks for less.

    A timeout, a truncated answer or HTTP 413/502-504 is not retried as it is: it is the query's size.
    """
    try:
        result = await rpc.call("eth_getLogs", _query(from_block, to_block, addresses), retry_malformed=False)
    except (RpcError, RpcTransportError) as exc:
        rng = classify_range_error(exc)
        if rng is not None:
            raise rng from None
        raise
    if not isinstance(result, list):
        raise RangeTooLarge(f"eth_getLogs answered {type(result).__name__}, not a list: shrinking the range")
    return result


async def get_logs_raw(rpc: RpcClient, from_block: int, to_block: int, addresses: Sequence[str]) -> Any:
    """``eth_getLogs`` over [from_block, to_block]: the HTTP 200 answer's bytes, unparsed (a decode
    worker parses them: :func:`keeper.indexer.prepare.prepare_raw`), or a parsed non-200 JSON-RPC
    answer. Transport failures raise as in :func:`get_logs`."""
    try:
        return await rpc.request("eth_getLogs", _query(from_block, to_block, addresses), raw=True)
    except RpcTransportError as exc:
        rng = classify_range_error(exc)
        if rng is not None:
            raise rng from None
        raise
