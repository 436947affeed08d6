"""Raw JSON-RPC over aiohttp + orjson, and adaptive ``eth_getLogs`` ranges.

* :class:`RpcClient` - single calls and batches, retries with exponential backoff and jitter on
  transport errors (connection refused/reset, timeouts, HTTP 5xx, malformed JSON) and HTTP 429;
  JSON-RPC error objects are raised as :class:`RpcError` (not retried: the caller decides).
  Several URLs fail over: a URL that fails is marked down for ``down_for`` seconds and requests go to
  the first URL (in configured order) that is not down, so the primary is tried again once its
  cooldown ends ("primary back"). A 429 pauses every request through the shared
  :class:`keeper.chain.rpc.RateLimiter` for ``Retry-After`` (or the backoff) and is retried on the
  same URL; an optional ``rate`` caps requests/s.
* :func:`classify_range_error` - recognises the common providers' "range too large / too many results"
  answers (Alchemy, Infura, QuickNode, Ankr, Erigon/Geth limits, code -32005, HTTP 413) and extracts the
  range they suggest when they give one.
* :class:`AdaptiveRange` - the block span of the next ``eth_getLogs``: doubles on success (while the
  answers stay small), halves or takes the provider's suggestion on a range error, a timeout or a
  truncated/malformed answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from keeper.chain.rpc import RateLimiter, _retry_after
from keeper.errors import KeeperError

log = logging.getLogger(__name__)

__all__ = [
    "AdaptiveRange",
    "RangeTooLarge",
    "RpcClient",
    "RpcError",
    "RpcUnavailable",
    "TransportError",
    "classify_range_error",
]


class RpcError(Exception):
    """A JSON-RPC error object returned by the node."""

    def __init__(self, code: int | None, message: str, data: Any = None, method: str = "") -> None:
        super().__init__(f"{method}: [{code}] {message}" if method else f"[{code}] {message}")
        self.code = code
        self.message = message
        self.data = data
        self.method = method


class TransportError(Exception):
    """No usable answer: connection failure, timeout, HTTP error status, malformed or truncated JSON."""

    def __init__(
        self,
        message: str,
        *,
        timeout: bool = False,
        malformed: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.malformed = malformed
        self.status = status
        self.retry_after = retry_after  # seconds, from a 429's Retry-After header


class RpcUnavailable(KeeperError):
    """Every retry failed."""


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


# ------------------------------------------------------------------------------ range errors

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


def classify_range_error(err: RpcError | TransportError) -> RangeTooLarge | None:
    """A RangeTooLarge when ``err`` means "ask for fewer blocks", else None."""
    if isinstance(err, TransportError):
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


class AdaptiveRange:
    """Span (in blocks) of the next log query."""

    def __init__(
        self, initial: int, minimum: int = 1, maximum: int = 100_000, target_logs: int = 5_000
    ) -> None:
        self.minimum = max(1, minimum)
        self.maximum = max(self.minimum, maximum)
        self.size = min(max(initial, self.minimum), self.maximum)
        self.target_logs = target_logs
        self.cap: int | None = None  # a hard limit the provider told us about

    def success(self, span: int, n_logs: int) -> None:
        if n_logs > 2 * self.target_logs and span > self.minimum:
            # proportional: a dense chain reaches target_logs per range at once (bounded memory)
            self.size = max(self.minimum, min(span // 2, span * self.target_logs // n_logs))
        elif n_logs < self.target_logs and span >= self.size:
            self.size = min(self.maximum, self.size * 2, self.cap or self.maximum)

    def too_large(self, span: int, err: RangeTooLarge, start: int) -> None:
        if err.suggested is not None and err.suggested[0] == start or err.suggested is not None:
            new = err.suggested[1] - err.suggested[0] + 1
        elif err.max_blocks is not None:
            new = err.max_blocks
            self.cap = err.max_blocks
        else:
            new = span // 2
        self.size = max(self.minimum, min(new, max(self.minimum, span - 1)))


# ------------------------------------------------------------------------------ client


class RpcClient:
    """JSON-RPC over HTTP with aiohttp and orjson (no web3 formatting on the hot path)."""

    def __init__(
        self,
        urls: Sequence[str] | str,
        *,
        timeout: float = 10.0,
        retries: int = 6,
        backoff: float = 0.25,
        max_backoff: float = 10.0,
        batch_size: int = 100,
        rate: float | None = None,
        down_for: float = 15.0,
        max_retry_after: float = 30.0,
        rate_limited_retries: int = 50,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise KeeperError("no RPC URL configured (chain.rpc_urls)")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self.down_for = down_for  # a failed URL is skipped this long, then tried again
        self.max_retry_after = max_retry_after
        self.rate_limited_retries = rate_limited_retries  # 429s per request before giving up
        self.limiter = RateLimiter(rate)
        self._down_until = [0.0] * len(self.urls)
        self._i = 0
        self._id = 0
        self._session: aiohttp.ClientSession | None = None
        self.failovers = 0  # times a request moved to another URL (tests, metrics)

    @property
    def url(self) -> str:
        return self.urls[self._i]

    def _pick(self) -> int:
        """The first URL (configured order) not marked down; all down: the one back soonest."""
        now = time.monotonic()
        for i, until in enumerate(self._down_until):
            if until <= now:
                return i
        return min(range(len(self.urls)), key=self._down_until.__getitem__)

    def _mark_down(self, i: int) -> None:
        if len(self.urls) > 1:
            self._down_until[i] = time.monotonic() + self.down_for

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Content-Type": "application/json"},
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    def _next_id(self) -> int:
        self._id += 1
        return self._id

    async def _post(self, payload: Any, *, raw_ok: bool = False) -> Any:
        """One HTTP round trip; TransportError on anything but a parsable JSON answer.

        ``raw_ok``: a 200 answer is returned as bytes, unparsed (the caller parses it elsewhere).
        """
        body = orjson.dumps(payload)
        await self.limiter.acquire()
        i = self._pick()
        if i != self._i:
            log.warning("RPC: switching from %s to %s", self.urls[self._i], self.urls[i])
            self._i = i
        try:
            async with self._sess().post(self.url, data=body) as resp:
                raw = await resp.read()
                if resp.status == 429:
                    wait = _retry_after(resp.headers.get("Retry-After"))
                    raise TransportError(f"HTTP 429 from {self.url}", status=429, retry_after=wait)
                if resp.status != 200:
                    # Some nodes answer JSON-RPC errors with 4xx/5xx bodies: use them when parsable.
                    try:
                        parsed = orjson.loads(raw)
                    except orjson.JSONDecodeError:
                        parsed = None
                    if isinstance(parsed, dict | list) and resp.status not in (429, 502, 503, 504):
                        return parsed
                    raise TransportError(f"HTTP {resp.status} from {self.url}", status=resp.status)
        except TimeoutError:
            raise TransportError(f"timeout after {self.timeout:g} s from {self.url}", timeout=True) from None
        except aiohttp.ClientPayloadError as exc:
            raise TransportError(f"truncated answer from {self.url}: {exc}", malformed=True) from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__} from {self.url}: {exc}") from None
        if raw_ok:
            return raw
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TransportError(
                f"malformed JSON from {self.url} ({len(raw)} bytes)", malformed=True
            ) from None

    async def _with_retries(self, payload: Any, *, retry_malformed: bool = True, raw_ok: bool = False) -> Any:
        attempt = 0
        limited = 0
        while True:
            try:
                return await self._post(payload, raw_ok=raw_ok)
            except TransportError as exc:
                if exc.status == 429:  # rate limited: pause everyone, retry the same URL
                    limited += 1
                    if limited > self.rate_limited_retries:
                        raise RpcUnavailable(
                            f"RPC unavailable: {exc} ({self.rate_limited_retries} times in a row)"
                        ) from None
                    delay = exc.retry_after
                    if delay is None:
                        delay = self._backoff(limited)
                    delay = min(delay, self.max_retry_after)
                    self.limiter.pause(delay)
                    log.info("%s; pausing requests for %.2f s", exc, delay)
                    continue  # the limiter waits
                if not retry_malformed and (
                    exc.malformed or exc.timeout or exc.status in (413, 502, 503, 504)
                ):
                    raise  # a log query that is too big: the caller shrinks the range instead
                attempt += 1
                if attempt > self.retries:
                    raise RpcUnavailable(f"RPC unavailable: {exc} (after {self.retries} retries)") from None
                failed = self._i
                self._mark_down(failed)
                if self._pick() != failed:
                    self.failovers += 1
                    log.warning("%s; failing over to %s", exc, self.urls[self._pick()])
                    continue  # another URL is up: no need to wait
                delay = self._backoff(attempt)
                log.warning("%s; retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter (50-100 % of the step)."""
        step = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return float(step * (0.5 + random.random() / 2))

    @staticmethod
    def _result(reply: Any, method: str) -> Any:
        if not isinstance(reply, dict):
            raise TransportError(f"unexpected answer to {method}: {str(reply)[:200]}", malformed=True)
        if "error" in reply and reply["error"] is not None:
            err = reply["error"]
            if isinstance(err, dict):
                raise RpcError(err.get("code"), str(err.get("message", "")), err.get("data"), method)
            raise RpcError(None, str(err), None, method)
        if "result" not in reply:
            raise TransportError(f"answer to {method} without result", malformed=True)
        return reply["result"]

    async def call(
        self, method: str, params: list[Any] | None = None, *, retry_malformed: bool = True
    ) -> Any:
        payload = {"jsonrpc": "2.0", "id": self._next_id(), "method": method, "params": params or []}
        reply = await self._with_retries(payload, retry_malformed=retry_malformed)
        return self._result(reply, method)

    async def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Results of ``calls`` in order (chunks of ``batch_size``); raises the first error."""
        out: list[Any] = []
        for i in range(0, len(calls), self.batch_size):
            chunk = calls[i : i + self.batch_size]
            base = self._next_id()
            self._id += len(chunk)
            payload = [
                {"jsonrpc": "2.0", "id": base + k, "method": m, "params": p} for k, (m, p) in enumerate(chunk)
            ]
            reply = await self._with_retries(payload)
            if isinstance(reply, dict):  # some nodes answer a whole batch with one error object
                self._result(reply, chunk[0][0])
                raise TransportError("batch answered with a single object", malformed=True)
            by_id = {r.get("id"): r for r in reply if isinstance(r, dict)}
            for k, (m, _p) in enumerate(chunk):
                r = by_id.get(base + k)
                if r is None:
                    raise TransportError(f"batch answer without id {base + k} ({m})", malformed=True)
                out.append(self._result(r, m))
        return out

    # ------------------------------------------------------------------------ helpers

    async def chain_id(self) -> int:
        return int(await self.call("eth_chainId"), 16)

    async def block_number(self) -> int:
        return int(await self.call("eth_blockNumber"), 16)

    async def chain_id_and_head(self) -> tuple[int, int]:
        cid, head = await self.batch([("eth_chainId", []), ("eth_blockNumber", [])])
        return int(cid, 16), int(head, 16)

    async def headers(self, numbers: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Block headers (without transactions) by number; a missing block raises TransportError."""
        res = await self.batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
        out: dict[int, dict[str, Any]] = {}
        for n, h in zip(numbers, res, strict=True):
            if h is None:
                raise MissingBlock(n)
            out[n] = h
        return out

    async def get_logs(
        self, from_block: int, to_block: int, addresses: Sequence[str]
    ) -> list[dict[str, Any]]:
        """``eth_getLogs`` over [from_block, to_block]; RangeTooLarge when the node asks for less."""
        params = [{"fromBlock": hex(from_block), "toBlock": hex(to_block), "address": list(addresses)}]
        try:
            result = await self.call("eth_getLogs", params, retry_malformed=False)
        except RpcError as exc:
            rng = classify_range_error(exc)
            if rng is not None:
                raise rng from None
            raise
        except TransportError as exc:
            rng = classify_range_error(exc)
            if rng is not None:
                raise rng from None
            raise
        if not isinstance(result, list):
            raise RangeTooLarge(
                f"eth_getLogs answered {type(result).__name__}, not a list: shrinking the range"
            )
        return result

    async def get_logs_raw(self, from_block: int, to_block: int, addresses: Sequence[str]) -> Any:
        """``eth_getLogs`` over [from_block, to_block]: the HTTP 200 answer's bytes, unparsed (a
        decode worker parses them: :func:`keeper.indexer.prepare.prepare_raw`), or a parsed non-200
        JSON-RPC answer. Transport failures raise as in :meth:`get_logs` (RangeTooLarge when the node
        asks for less)."""
        params = [{"fromBlock": hex(from_block), "toBlock": hex(to_block), "address": list(addresses)}]
        payload = {"jsonrpc": "2.0", "id": self._next_id(), "method": "eth_getLogs", "params": params}
        try:
            return await self._with_retries(payload, retry_malformed=False, raw_ok=True)
        except TransportError as exc:
            rng = classify_range_error(exc)
            if rng is not None:
                raise rng from None
            raise


class MissingBlock(TransportError):
    """The node does not have a block (any more): a reorg or a lagging node."""

    def __init__(self, number: int) -> None:
        super().__init__(f"block {number} not found")
        self.number = number
