"""The JSON-RPC client against small in-process aiohttp servers: failover, retries, 429, errors, batch.

The indexer's fault-injecting proxy (tests/integration/test_indexer_fetch.py) runs the same client
against anvil."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from keeper.chain.rpc import RpcClient, RpcError, RpcTransportError, RpcUnavailable


async def serve(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/"


def answer(req_body: Any, result: Any = "0x1") -> Any:
    if isinstance(req_body, list):
        return [answer(r, result) for r in req_body]
    if req_body["method"] == "bad":
        err = {"code": 3, "message": "reverted", "data": "0xab"}
        return {"jsonrpc": "2.0", "id": req_body["id"], "error": err}
    return {"jsonrpc": "2.0", "id": req_body["id"], "result": result}


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def answering(hits: dict[str, int], name: str, result: str) -> Any:
    """A handler that counts its requests in ``hits[name]`` and answers ``result``."""

    async def handler(req: web.Request) -> web.Response:
        hits[name] += 1
        return web.json_response(answer(orjson.loads(await req.read()), result))

    return handler


@contextlib.asynccontextmanager
async def client_of(*handlers: Any, **options: Any) -> AsyncIterator[RpcClient]:
    """An RpcClient over one in-process server per handler (URLs in that order), all closed after."""
    runners = []
    try:
        for h in handlers:
            runners.append(await serve(h))
        rpc = RpcClient([u for _, u in runners], **options)
        try:
            yield rpc
        finally:
            await rpc.close()
    finally:
        for r, _ in runners:
            await r.cleanup()


def test_failover_retries_429_and_errors() -> None:
    async def main() -> None:
        hits = {"down": 0, "busy": 0, "ok": 0}

        async def down(req: web.Request) -> web.Response:
            hits["down"] += 1
            return web.Response(status=503)

        async def busy(req: web.Request) -> web.Response:
            hits["busy"] += 1
            if hits["busy"] == 1:
                return web.Response(status=429, headers={"Retry-After": "0.3"})
            return web.json_response(answer(orjson.loads(await req.read()), "0xb"))

        r1, u1 = await serve(down)
        r2, u2 = await serve(busy)
        rpc = RpcClient([u1, u2], backoff=0.01, retries=4)
        try:
            t0 = time.monotonic()
            assert await rpc.call("eth_blockNumber") == "0xb"  # failover past a 503, then a 429 (waits)
            assert time.monotonic() - t0 >= 0.3
            # the 503 marks the primary down; the 429 rests the secondary too: with no URL up, every
            # request waits for the one back first (the secondary, after its Retry-After)
            assert hits["down"] == 1 and hits["busy"] == 2 and rpc.failovers == 1
            with pytest.raises(RpcError) as err:
                await rpc.call("bad")
            assert (err.value.code, err.value.data) == (3, "0xab")
            assert hits["busy"] == 3  # an error answer is not retried
            out = await rpc.batch([("eth_chainId", []), ("bad", []), ("eth_gasPrice", [])])
            assert out[0] == "0xb" and isinstance(out[1], RpcError) and out[2] == "0xb"
        finally:
            await rpc.close()
            await r1.cleanup()
            await r2.cleanup()

    run(main())


def test_gives_up_after_attempts_and_times_out() -> None:
    async def main() -> None:
        async def slow(req: web.Request) -> web.Response:
            await asyncio.sleep(1)
            return web.json_response(answer(orjson.loads(await req.read())))

        r, u = await serve(slow)
        rpc = RpcClient(u, timeout=0.1, retries=1, backoff=0.01)
        try:
            with pytest.raises(RpcUnavailable, match="timed out after 0.1 s.*after 1 retries"):
                await rpc.call("eth_blockNumber")
        finally:
            await rpc.close()
            await r.cleanup()
        rpc = RpcClient("http://127.0.0.1:9/", retries=1, backoff=0.01)
        with pytest.raises(RpcTransportError):  # RpcUnavailable is one
            await rpc.call("eth_blockNumber")
        await rpc.close()

    run(main())


def test_primary_is_used_again_after_its_cooldown() -> None:
    async def main() -> None:
        hits = {"primary": 0, "secondary": 0}
        ok = answering(hits, "primary", "0xa")

        async def primary(req: web.Request) -> web.Response:
            if hits["primary"] == 0:
                hits["primary"] += 1
                return web.Response(status=502)
            return await ok(req)

        async with client_of(primary, answering(hits, "secondary", "0xb"), backoff=0.01, down_for=0.3) as rpc:
            assert await rpc.call("eth_blockNumber") == "0xb"  # 502: on to the secondary at once
            assert await rpc.call("eth_blockNumber") == "0xb"  # the primary is down for 0.3 s
            await asyncio.sleep(0.35)
            assert await rpc.call("eth_blockNumber") == "0xa"  # and back
            assert hits == {"primary": 2, "secondary": 2} and rpc.failovers == 1

    run(main())


def test_what_is_not_retried() -> None:
    """An HTTP 401 is an answer (asking again won't help); a malformed answer to a request that must not
    be retried as it is (a log query: the caller shrinks it) is raised at once; 429s have their own
    budget; a JSON error body with HTTP 500 is the node's answer."""

    async def main() -> None:
        hits: dict[str, int] = {}

        async def handler(req: web.Request) -> web.Response:
            body = orjson.loads(await req.read())
            hits[body["method"]] = hits.get(body["method"], 0) + 1
            if body["method"] == "auth":
                return web.Response(status=401, text="missing API key")
            if body["method"] == "half":
                return web.Response(text='{"jsonrpc": "2.0", "id": 1, "res', content_type="application/json")
            if body["method"] == "busy":
                return web.Response(status=429)
            err = {"code": -32000, "message": "header not found"}
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "error": err}, status=500)

        r, u = await serve(handler)
        rpc = RpcClient(u, retries=3, backoff=0.01, rate_limited_retries=2)
        try:
            with pytest.raises(RpcError, match="HTTP 401"):
                await rpc.call("auth")
            with pytest.raises(RpcTransportError, match="malformed JSON") as info:
                await rpc.call("half", retry_malformed=False)
            assert info.value.malformed and not isinstance(info.value, RpcUnavailable)
            with pytest.raises(RpcUnavailable, match="after 3 retries"):
                await rpc.call("half")
            with pytest.raises(RpcUnavailable, match="429.*2 times in a row"):
                await rpc.call("busy")
            with pytest.raises(RpcError, match="header not found") as err:
                await rpc.call("gone")
            assert err.value.code == -32000
            assert hits == {"auth": 1, "half": 1 + 4, "busy": 3, "gone": 1}
        finally:
            await rpc.close()
            await r.cleanup()

    run(main())


def test_a_rate_limited_url_rests_while_another_answers() -> None:
    async def main() -> None:
        hits = {"primary": 0, "secondary": 0}

        async def primary(req: web.Request) -> web.Response:
            hits["primary"] += 1
            return web.Response(status=429, headers={"Retry-After": "5"})

        async with client_of(primary, answering(hits, "secondary", "0xb"), backoff=0.01) as rpc:
            t0 = time.monotonic()
            assert await rpc.call("eth_blockNumber") == "0xb"
            assert await rpc.call("eth_chainId") == "0xb"
            assert time.monotonic() - t0 < 2  # nobody waited for the primary's Retry-After
            assert hits == {"primary": 1, "secondary": 2} and rpc.failovers == 1

    run(main())
