"""The JSON-RPC client against small in-process aiohttp servers: failover, retries, 429, errors, batch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiohttp import web

from keeper.chain.rpc import RpcClient, RpcError, RpcTransportError


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
        rpc = RpcClient([u1, u2], backoff_initial=0.01, attempts=5)
        try:
            t0 = time.monotonic()
            assert await rpc.call("eth_blockNumber") == "0xb"  # failover past 503s and a 429 (waits)
            assert time.monotonic() - t0 >= 0.3
            assert hits["down"] == 2 and hits["busy"] == 2  # round robin: 503, 429, 503, ok
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
        rpc = RpcClient(u, timeout=0.1, attempts=2, backoff_initial=0.01)
        try:
            with pytest.raises(RpcTransportError, match="timed out"):
                await rpc.call("eth_blockNumber")
        finally:
            await rpc.close()
            await r.cleanup()
        rpc = RpcClient("http://127.0.0.1:9/", attempts=2, backoff_initial=0.01)
        with pytest.raises(RpcTransportError):
            await rpc.call("eth_blockNumber")
        await rpc.close()

    run(main())
