"""A small async JSON-RPC client shared by the executor and the indexer (aiohttp + orjson).

* several URLs with failover: a transport error, HTTP 429 or 5xx moves the client to the next URL;
* a client-side timeout per request;
* retries with exponential backoff and jitter (tenacity) on transport errors, 429 and 5xx only;
* a rate limiter (optional requests/s) that pauses every caller after a 429 (``Retry-After`` honoured);
* a JSON-RPC error answer is :class:`RpcError` (code, message, data) and is never retried;
* :meth:`RpcClient.batch` sends many calls in one HTTP request.

    rpc = RpcClient(["http://127.0.0.1:8545"])
    block = await rpc.call("eth_blockNumber")
    a, b = await rpc.batch([("eth_chainId", []), ("eth_gasPrice", [])])
    await rpc.close()
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

__all__ = ["RpcClient", "RpcError", "RpcTransportError", "RateLimiter"]


class RpcError(Exception):
    """A JSON-RPC error answer: the node understood the request and refused it (not retried)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    def __repr__(self) -> str:
        return f"RpcError(code={self.code!r}, message={self.message!r}, data={self.data!r})"


class RpcTransportError(Exception):
    """The request did not get an answer (connection, timeout, HTTP 429/5xx, bad body) on any attempt."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


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


class RpcClient:
    """JSON-RPC over HTTP with failover, retries, timeout and rate limiting (see module docstring)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        timeout: float = 10.0,
        attempts: int = 5,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        rate: float | None = None,
        max_retry_after: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("RpcClient needs at least one URL")
        self.timeout = timeout
        self.attempts = attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.limiter = RateLimiter(rate)
        self._session = session
        self._own_session = session is None
        self._url_index = 0
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        """The URL the next request goes to."""
        return self.urls[self._url_index % len(self.urls)]

    def _failover(self, failed_url: str) -> None:
        if self.url == failed_url:  # another task may already have moved on
            self._url_index = (self._url_index + 1) % len(self.urls)

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                json_serialize=lambda o: orjson.dumps(o).decode(),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )
            self._own_session = True
        return self._session

    async def _post_once(self, body: bytes) -> Any:
        await self.limiter.acquire()
        url = self.url
        session = await self._get_session()
        try:
            async with session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                raw = await resp.read()
                if resp.status == 429:
                    wait = _retry_after(resp.headers.get("Retry-After"))
                    self.limiter.pause(min(wait if wait is not None else 1.0, self.max_retry_after))
                    self._failover(url)
                    raise RpcTransportError(
                        f"{url}: HTTP 429 Too Many Requests", status=429, retry_after=wait
                    )
                if resp.status >= 500:
                    self._failover(url)
                    raise RpcTransportError(f"{url}: HTTP {resp.status}", status=resp.status)
                try:
                    return orjson.loads(raw)
                except orjson.JSONDecodeError:
                    if resp.status >= 400:  # e.g. 400/401/403 with a text body: not retried
                        raise RpcError(-32000, f"HTTP {resp.status}: {raw[:200]!r}") from None
                    self._failover(url)
                    raise RpcTransportError(f"{url}: HTTP {resp.status}, body is not JSON") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._failover(url)
            what = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise RpcTransportError(f"{url}: {what}") from exc

    async def _post(self, payload: Any) -> Any:
        body = orjson.dumps(payload)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RpcTransportError),
            wait=wait_exponential_jitter(
                multiplier=self.backoff_initial, max=self.backoff_max, jitter=self.backoff_initial
            ),
            stop=stop_after_attempt(self.attempts),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._post_once(body)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _unwrap(reply: Any) -> Any:
        if not isinstance(reply, dict):
            raise RpcError(-32603, f"malformed JSON-RPC reply: {reply!r:.200}")
        err = reply.get("error")
        if err is not None:
            if isinstance(err, dict):
                raise RpcError(int(err.get("code", -32603)), str(err.get("message", "")), err.get("data"))
            raise RpcError(-32603, str(err))
        return reply.get("result")

    async def call(self, method: str, params: Sequence[Any] | None = None) -> Any:
        """The result of one call; RpcError for an error answer, RpcTransportError when no answer came."""
        reply = await self._post(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params or [])}
        )
        return self._unwrap(reply)

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Results in the order of ``calls``; a failed call's slot holds its RpcError (not raised)."""
        if not calls:
            return []
        ids = [next(self._ids) for _ in calls]
        payload = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": list(p)}
            for i, (m, p) in zip(ids, calls, strict=True)
        ]
        replies = await self._post(payload)
        if isinstance(replies, dict):  # some nodes answer a whole rejected batch with one error object
            err = self._unwrap_error(replies)
            return [err for _ in calls]
        by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
        out: list[Any] = []
        for i in ids:
            r = by_id.get(i)
            if r is None:
                out.append(RpcError(-32603, "no reply for this call in the batch"))
                continue
            try:
                out.append(self._unwrap(r))
            except RpcError as exc:
                out.append(exc)
        return out

    def _unwrap_error(self, reply: dict[str, Any]) -> RpcError:
        try:
            self._unwrap(reply)
        except RpcError as exc:
            return exc
        return RpcError(-32603, "batch answered with a single non-error object")

    async def close(self) -> None:
        if self._session is not None and self._own_session and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def jitter(seconds: float) -> float:
    """``seconds`` ± 10 %: for pollers built on this client."""
    return seconds * random.uniform(0.9, 1.1)
