"""The keeper's one JSON-RPC client (aiohttp + orjson): the indexer, the executor and the publisher.

* Several URLs with failover: a URL that fails (no connection, timeout, HTTP 5xx, a malformed answer)
  is marked down for ``down_for`` seconds, and requests go to the first URL in configured order that
  is not down: the primary is used again once its cooldown ends.
* A client-side timeout per request.
* Retries with exponential backoff and jitter (tenacity) on transport errors and HTTP 429/5xx only; a
  retry that moves to another URL does not wait. When every retry failed: :class:`RpcUnavailable`.
* HTTP 429 rests that URL for ``Retry-After`` (or the backoff) and moves on to another one; with none
  up, every request waits through the shared :class:`RateLimiter`. 429s have a retry budget of their
  own; an optional ``rate`` caps requests/s.
* A JSON-RPC error answer is :class:`RpcError` (code, message, data) and is never retried; neither is
  an HTTP 4xx without a JSON body (401, 403: asking again will not help).
* :meth:`RpcClient.batch` sends many calls in one HTTP request (chunks of ``batch_size``, concurrently).

    rpc = RpcClient(["http://127.0.0.1:8545"])
    block = await rpc.call("eth_blockNumber")
    a, b = await rpc.batch([("eth_chainId", []), ("eth_gasPrice", [])])
    await rpc.close()
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception

from keeper.errors import KeeperError

log = logging.getLogger(__name__)

__all__ = [
    "MissingBlock",
    "RateLimiter",
    "RpcClient",
    "RpcError",
    "RpcTransportError",
    "RpcUnavailable",
    "jitter",
]

#: HTTP statuses that mean "this query is too big" to a log query (not retried when the caller shrinks
#: the query instead: ``retry_malformed=False``)
_TOO_BIG = (413, 502, 503, 504)


class RpcError(Exception):
    """A JSON-RPC error answer: the node understood the request and refused it (not retried)."""

    def __init__(self, code: int | None, message: str, data: Any = None, method: str = "") -> None:
        text = f"RPC error {code}: {message}"
        super().__init__(f"{method}: {text}" if method else text)
        self.code = code
        self.message = message
        self.data = data
        self.method = method

    def __repr__(self) -> str:
        return f"RpcError(code={self.code!r}, message={self.message!r}, data={self.data!r})"

    @property
    def reverted(self) -> bool:
        """A call that reverted (``eth_call``, ``eth_estimateGas``): code 3, or a node's "revert" text."""
        return self.code == 3 or "revert" in self.message.lower()

    @property
    def revert_data(self) -> str | None:
        """The revert data (hex) the error carries: anvil sends it as ``data``, others as ``{data: hex}``."""
        d = self.data
        if isinstance(d, Mapping):
            d = d.get("data") or d.get("result")
        return d if isinstance(d, str) and d.startswith("0x") else None


class RpcTransportError(Exception):
    """No usable answer: connection failure, timeout, HTTP 429/5xx, malformed or truncated JSON."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        timeout: bool = False,
        malformed: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after  # seconds, from a 429's Retry-After header
        self.timeout = timeout
        self.malformed = malformed


class RpcUnavailable(KeeperError, RpcTransportError):
    """Every retry failed: one line for the operator (a KeeperError), still a transport error."""


class MissingBlock(RpcTransportError):
    """The node does not have a block (any more): a reorg or a lagging node."""

    def __init__(self, number: int) -> None:
        super().__init__(f"block {number} not found")
        self.number = number


class RateLimiter:
    """At most ``rate`` requests per second (None: unlimited), and a shared pause after a 429."""

    def __init__(self, rate: float | None = None) -> None:
        self.rate = rate
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._paused_until)
            if self.rate:
                start = max(start, self._next_slot)
                self._next_slot = start + 1.0 / self.rate
            delay = start - now
        if delay > 0:
            await asyncio.sleep(delay)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass
class _Tally:
    """One request's failures so far: what tenacity's stop and wait decide on."""

    failures: int = 0  # transport failures (429s aside)
    limited: int = 0  # 429s
    wait: float = 0.0  # before the next attempt
    last: RpcTransportError | None = None


class RpcClient:
    """JSON-RPC over HTTP with failover, retries, timeout and rate limiting (see module docstring)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        batch_size: int = 1_000,
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
        self.batch_size = max(1, batch_size)
        self.down_for = down_for  # a failed URL is skipped this long, then tried again
        self.max_retry_after = max_retry_after
        self.rate_limited_retries = rate_limited_retries  # 429s per request before giving up
        self.limiter = RateLimiter(rate)
        self.failovers = 0  # times a request moved to another URL (tests, metrics)
        self._down_until = [0.0] * len(self.urls)
        self._i = 0
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """The URL the last request went to."""
        return self.urls[self._i]

    def _pick(self) -> int:
        """The first URL (configured order) not marked down; all down: the one back soonest."""
        now = time.monotonic()
        for i, until in enumerate(self._down_until):
            if until <= now:
                return i
        return min(range(len(self.urls)), key=self._down_until.__getitem__)

    def _session_for_requests(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Content-Type": "application/json"},
            )
        return self._session

    # ------------------------------------------------------------------------------ one attempt

    async def _post_once(self, body: bytes, raw: bool) -> Any:
        """One HTTP round trip: the parsed answer (``raw``: a 200 answer's bytes, unparsed)."""
        await self.limiter.acquire()
        i = self._pick()
        if i != self._i:
            log.warning("RPC: switching from %s to %s", self.urls[self._i], self.urls[i])
            self._i = i
        url = self.urls[i]
        try:
            async with self._session_for_requests().post(url, data=body) as resp:
                answer = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            raise RpcTransportError(f"{url}: timed out after {self.timeout:g} s", timeout=True) from None
        except aiohttp.ClientPayloadError as exc:
            raise RpcTransportError(f"{url}: truncated answer ({exc})", malformed=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise RpcTransportError(f"{url}: {type(exc).__name__}: {exc}") from None
        if status == 429:
            wait = _retry_after(retry_after)
            raise RpcTransportError(f"{url}: HTTP 429 Too Many Requests", status=429, retry_after=wait)
        if status != 200:
            # Some nodes answer JSON-RPC errors with 4xx/5xx bodies: those are answers.
            try:
                parsed = orjson.loads(answer)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict | list) and status not in _TOO_BIG:
                return parsed
            if 400 <= status < 500 and status not in (408, 413):  # 401, 403, 404...: asking again won't help
                raise RpcError(-32000, f"HTTP {status} from {url}: {answer[:200]!r}")
            raise RpcTransportError(f"{url}: HTTP {status}", status=status)
        if raw:
            return answer
        try:
            return orjson.loads(answer)
        except orjson.JSONDecodeError:
            raise RpcTransportError(f"{url}: malformed JSON ({len(answer)} bytes)", malformed=True) from None

    # ------------------------------------------------------------------------------ retries

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter (50-100 % of the step)."""
        step = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return float(step * (0.5 + random.random() / 2))

    def _failed(self, exc: RpcTransportError, tally: _Tally) -> None:
        """Counts a retryable failure and decides the wait before the next attempt."""
        tally.last = exc
        failed = self._i
        if exc.status == 429:  # rate limited: that URL rests; another one, or everyone waits
            tally.limited += 1
            delay = exc.retry_after if exc.retry_after is not None else self._backoff(tally.limited)
            delay = min(delay, self.max_retry_after)
            if len(self.urls) > 1:
                self._down_until[failed] = max(self._down_until[failed], time.monotonic() + delay)
            if self._pick() != failed:
                self.failovers += 1
                log.info("%s; resting it %.2f s, on to %s", exc, delay, self.urls[self._pick()])
            else:
                self.limiter.pause(delay)  # the limiter makes every request wait
                log.info("%s; pausing requests for %.2f s", exc, delay)
            tally.wait = 0.0
            return
        tally.failures += 1
        if len(self.urls) > 1:
            self._down_until[failed] = time.monotonic() + self.down_for
        if self._pick() != failed:
            self.failovers += 1
            log.warning("%s; failing over to %s", exc, self.urls[self._pick()])
            tally.wait = 0.0  # another URL is up: no need to wait
        else:
            tally.wait = self._backoff(tally.failures)
            if tally.failures <= self.retries:
                log.warning("%s; retrying in %.2f s", exc, tally.wait)

    async def _request(self, payload: Any, *, retry_malformed: bool = True, raw: bool = False) -> Any:
        """The answer to ``payload``, retried as the module docstring says.

        ``retry_malformed=False``: a timeout, a truncated or malformed answer and HTTP 413/502-504 are
        raised at once (a log query that is too big: the caller shrinks it instead).
        """
        body = orjson.dumps(payload)
        tally = _Tally()

        def retryable(exc: BaseException) -> bool:
            if not isinstance(exc, RpcTransportError):
                return False  # an answer (RpcError) or a bug: never retried
            if exc.status == 429 or retry_malformed:
                return True
            return not (exc.malformed or exc.timeout or exc.status in _TOO_BIG)

        def stop(_: RetryCallState) -> bool:
            return tally.failures > self.retries or tally.limited > self.rate_limited_retries

        retrying = AsyncRetrying(retry=retry_if_exception(retryable), stop=stop, wait=lambda _: tally.wait)
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        return await self._post_once(body, raw)
                    except RpcTransportError as exc:
                        if retryable(exc):
                            self._failed(exc, tally)
                        raise
        except RetryError:
            last = tally.last
            times = (
                f"{self.rate_limited_retries} times in a row"
                if tally.limited > self.rate_limited_retries
                else f"after {self.retries} retries"
            )
            raise RpcUnavailable(f"RPC unavailable: {last} ({times})") from None
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------------------ calls

    @staticmethod
    def _result(reply: Any, method: str) -> Any:
        if not isinstance(reply, dict):
            raise RpcTransportError(f"unexpected answer to {method}: {str(reply)[:200]}", malformed=True)
        err = reply.get("error")
        if err is not None:
            if isinstance(err, dict):
                code = err.get("code")
                raise RpcError(code if isinstance(code, int) else None, str(err.get("message", "")),
                               err.get("data"), method)  # fmt: skip
            raise RpcError(None, str(err), None, method)
        if "result" not in reply:
            raise RpcTransportError(f"answer to {method} without result", malformed=True)
        return reply["result"]

    def _payload(self, method: str, params: Sequence[Any] | None) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params or [])}

    async def call(
        self, method: str, params: Sequence[Any] | None = None, *, retry_malformed: bool = True
    ) -> Any:
        """The result of one call; RpcError for an error answer, RpcTransportError when no answer came."""
        reply = await self._request(self._payload(method, params), retry_malformed=retry_malformed)
        return self._result(reply, method)

    async def request(self, method: str, params: Sequence[Any] | None = None, *, raw: bool = False) -> Any:
        """The whole answer of one call, not unwrapped (``raw``: a 200 answer's bytes, unparsed); a
        timeout or a malformed answer is not retried (see :meth:`_request`)."""
        return await self._request(self._payload(method, params), retry_malformed=False, raw=raw)

    async def batch(
        self, calls: Sequence[tuple[str, Sequence[Any]]], *, raise_errors: bool = False
    ) -> list[Any]:
        """Results in the order of ``calls``; a failed call's slot holds its RpcError, or with
        ``raise_errors`` the first error is raised. More than ``batch_size`` calls go in concurrent
        requests of ``batch_size``."""
        chunks = [calls[i : i + self.batch_size] for i in range(0, len(calls), self.batch_size)]
        if len(chunks) == 1:
            return await self._batch(chunks[0], raise_errors)
        parts = await asyncio.gather(*(self._batch(c, raise_errors) for c in chunks))
        return [r for part in parts for r in part]

    async def _batch(self, calls: Sequence[tuple[str, Sequence[Any]]], raise_errors: bool) -> list[Any]:
        payload = [self._payload(m, p) for m, p in calls]
        replies = await self._request(payload)
        if isinstance(replies, dict):  # some nodes answer a whole rejected batch with one error object
            try:
                self._result(replies, calls[0][0])
                err: RpcError | RpcTransportError = RpcTransportError(
                    "batch answered with a single object", malformed=True
                )
            except (RpcError, RpcTransportError) as exc:
                err = exc
            if raise_errors:
                raise err
            if not isinstance(err, RpcError):
                err = RpcError(-32603, str(err), None, calls[0][0])
            return [err for _ in calls]
        by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
        out: list[Any] = []
        for req, (method, _) in zip(payload, calls, strict=True):
            r = by_id.get(req["id"])
            if r is None:
                if raise_errors:
                    raise RpcTransportError(f"batch answer without id {req['id']} ({method})", malformed=True)
                out.append(RpcError(-32603, "no reply for this call in the batch", None, method))
                continue
            try:
                out.append(self._result(r, method))
            except (RpcError, RpcTransportError) as exc:
                if raise_errors:
                    raise
                out.append(exc if isinstance(exc, RpcError) else RpcError(-32603, str(exc), None, method))
        return out

    # ------------------------------------------------------------------------------ chain reads

    async def chain_id(self) -> int:
        return int(await self.call("eth_chainId"), 16)

    async def block_number(self) -> int:
        return int(await self.call("eth_blockNumber"), 16)

    async def chain_id_and_head(self) -> tuple[int, int]:
        cid, head = await self.batch([("eth_chainId", []), ("eth_blockNumber", [])], raise_errors=True)
        return int(cid, 16), int(head, 16)

    async def headers(self, numbers: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Block headers (without transactions) by number; a missing block raises MissingBlock."""
        res = await self.batch(
            [("eth_getBlockByNumber", [hex(n), False]) for n in numbers], raise_errors=True
        )
        out: dict[int, dict[str, Any]] = {}
        for n, h in zip(numbers, res, strict=True):
            if h is None:
                raise MissingBlock(n)
            out[n] = h
        return out

    # ------------------------------------------------------------------------------ lifetime

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def jitter(seconds: float) -> float:
    """``seconds`` ± 10 %: for pollers built on this client."""
    return seconds * random.uniform(0.9, 1.1)
