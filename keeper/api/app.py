"""The public, read-only aiohttp app: the page, the rule book, the JSON API and /healthz.

Served ONLY from the database: :class:`~keeper.api.state.PublicState` is reloaded from it every
``server.refresh_interval`` seconds, and requests read that in-memory copy (paged liquidations and
account pages query the database, in a thread). The single exception is /api/explain, which simulates
one ``eth_call``: it has its own tighter token bucket and a cap on concurrent simulations.

Hardening: every input validated (400 JSON), a per-client token bucket (429 with Retry-After), security
headers on every response (CSP ``default-src 'self'``, nosniff, frame DENY, Referrer-Policy), and a
middleware that turns any exception into a generic 500 JSON (the details go to the log only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from sqlalchemy import Engine

from keeper.api import render
from keeper.api import state as st
from keeper.api import validate as v
from keeper.api.explain import Context, simulate_trade
from keeper.api.openapi import openapi_document
from keeper.chain.rpc import RpcTransportError

log = logging.getLogger("keeper.api")

STATIC = Path(__file__).resolve().parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "interest-cohort=()",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ServerConfig:
    chain_id: int
    exchange: str | None = None
    fund_address: str | None = None
    stale_after: float = 30.0
    max_snapshot_age: float = 60.0
    max_head_age: float | None = None
    max_index_lag: int = 20
    refresh_interval: float = 1.0
    rate: float = 10.0
    burst: int = 40
    explain_rate: float = 1.0
    explain_burst: int = 5
    explain_concurrency: int = 4
    explain_timeout: float = 5.0
    max_page_size: int = 100
    poll: float = 3.0
    trust_forwarded_for: bool = False

    @classmethod
    def from_settings(
        cls, settings: Any, chain_id: int, exchange: str | None, fund_address: str | None = None
    ) -> ServerConfig:
        s = settings.server
        return cls(
            chain_id=chain_id, exchange=exchange, fund_address=fund_address,
            stale_after=s.stale_after_seconds,
            max_snapshot_age=s.max_snapshot_age_seconds, max_head_age=s.max_head_age_seconds,
            max_index_lag=s.max_index_lag_blocks, refresh_interval=s.refresh_interval,
            rate=s.rate_limit_per_second, burst=s.rate_limit_burst, explain_rate=s.explain_rate_per_second,
            explain_burst=s.explain_burst, explain_concurrency=s.explain_concurrency,
            explain_timeout=s.explain_timeout, max_page_size=s.max_page_size, poll=s.page_poll_seconds,
            trust_forwarded_for=s.trust_forwarded_for,
        )  # fmt: skip


class TokenBuckets:
    """Per-key token buckets (``rate`` tokens/s, ``burst`` capacity), bounded to ``max_keys`` keys (LRU)."""

    def __init__(
        self, rate: float, burst: int, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ):
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._b: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        now = self.clock()
        tokens, last = self._b.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._b[key] = (tokens, now)
        while len(self._b) > self.max_keys:
            self._b.popitem(last=False)
        return wait


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": message, "status": status}, status, headers)


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def client_key(request: web.Request, trust_forwarded: bool) -> str:
    if trust_forwarded:
        fwd = request.headers.get("X-Forwarded-For", "")
        if fwd:
            return fwd.split(",")[0].strip()[:64]
    return request.remote or "unknown"


CFG = web.AppKey("cfg", ServerConfig)
STATE = web.AppKey("state", st.PublicState)
ENGINE = web.AppKey("engine", Engine)
RPC = web.AppKey("rpc", object)
BUCKETS = web.AppKey("buckets", TokenBuckets)
EXPLAIN_BUCKETS = web.AppKey("explain_buckets", TokenBuckets)
EXPLAIN_SEM = web.AppKey("explain_sem", asyncio.Semaphore)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: "not found", 405: "method not allowed"}.get(exc.status, exc.reason or "error")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        if _wants_json(request):
            return json_error(exc.status, message, headers)
        return web.Response(text=render.error_page(exc.status, message), status=exc.status,
                            content_type="text/html", headers=headers)  # fmt: skip
    except v.BadInput as exc:
        if _wants_json(request):
            return json_error(400, str(exc))
        return web.Response(text=render.error_page(400, str(exc)), status=400, content_type="text/html")
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - logged with its traceback, never shown
        log.exception("unhandled error on %s %s", request.method, request.path)
        if _wants_json(request):
            return json_error(500, "internal error")
        return web.Response(
            text=render.error_page(500, "internal error"), status=500, content_type="text/html"
        )


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    cfg = request.app[CFG]
    if request.path == "/healthz" or request.path.startswith("/static/"):
        return await handler(request)
    wait = request.app[BUCKETS].take(client_key(request, cfg.trust_forwarded_for))
    if wait > 0:
        return json_error(429, "too many requests", {"Retry-After": str(max(1, math.ceil(wait)))})
    return await handler(request)


async def _security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    for k, val in SECURITY_HEADERS.items():
        response.headers.setdefault(k, val)
    response.headers.setdefault("Cache-Control", "no-store")


# ------------------------------------------------------------------------------------ response cache


class ResponseCache:
    """Rendered bodies of the snapshot pages (/, /api/insurance-fund, /api/markets), per state version.

    A body depends only on the in-memory state (``PublicState.version``, bumped by every refresh), the
    query and the snapshot's age as shown (``age_seconds`` rounded to 0.1 s, and whether it is stale);
    the key holds all of them, so a cached body is byte for byte what rendering would give, and a hit
    is a dict lookup plus the write. Entries of older versions are dropped on the first miss of a new
    version; the dict is bounded (cleared past ``max_entries``).
    """

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self.version = -1
        self._d: dict[tuple[Any, ...], bytes] = {}

    def get(self, key: tuple[Any, ...], version: int) -> bytes | None:
        if version != self.version:
            return None
        return self._d.get(key)

    def put(self, key: tuple[Any, ...], version: int, body: bytes) -> None:
        if version != self.version or len(self._d) >= self.max_entries:
            self._d.clear()
            self.version = version
        self._d[key] = body


CACHE = web.AppKey("cache", ResponseCache)


def _headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": content_type, **SECURITY_HEADERS, "Cache-Control": "no-store"}


_HTML_HEADERS = _headers("text/html; charset=utf-8")
_JSON_HEADERS = _headers("application/json")


def _age_key(s: st.PublicState, cfg: ServerConfig, now: float) -> tuple[float | None, bool]:
    """What of the time a snapshot body shows: its age (0.1 s) and whether it is stale."""
    if s.fund is None:
        return None, False
    age = max(0.0, now - float(s.fund["read_at"]))
    return round(age, 1), age > cfg.stale_after


def _cached(
    request: web.Request, key: tuple[Any, ...], headers: dict[str, str], render_body: Callable[[float], bytes]
) -> web.Response:
    """The cached body for ``key`` (rendered at ``now`` on a miss), as a 200 response."""
    app = request.app
    s, cache = app[STATE], app[CACHE]
    version = s.version  # read before rendering: a refresh meanwhile invalidates what we store
    now = time.time()
    full = (*key, *_age_key(s, app[CFG], now))
    body = cache.get(full, version)
    if body is None:
        body = render_body(now)
        cache.put(full, version, body)
    return web.Response(body=body, headers=headers)


# ------------------------------------------------------------------------------------ handlers


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _only(request: web.Request, *names: str) -> None:
    """Unknown query parameters are rejected (400)."""
    for k in request.query:
        if k not in names:
            raise v.BadInput(k, "unknown parameter")


async def index(request: web.Request) -> web.Response:
    _only(request, "range")
    rng = v.choice(request.query.get("range"), "range", tuple(st.RANGES), "day")
    cfg, s = request.app[CFG], request.app[STATE]

    def page(now: float) -> bytes:
        return render.index_page(s, stale_after=cfg.stale_after, poll=cfg.poll, rng=rng, now=now).encode()

    return _cached(request, ("/", rng), _HTML_HEADERS, page)


async def rules(request: web.Request) -> web.Response:
    _only(request)
    return _html(render.rules_page(request.app[STATE], poll=request.app[CFG].poll))


async def whales(request: web.Request) -> web.Response:
    _only(request)
    s = request.app[STATE]
    return _html(render.whales_page(st.whale_json(s.whales, s.symbols), poll=request.app[CFG].poll))


async def account_form(request: web.Request) -> web.Response:
    _only(request, "address")
    if "address" in request.query:
        try:
            addr = v.address(request.query.get("address"))
        except v.BadInput as exc:
            return _html(render.account_form(poll=request.app[CFG].poll, error=str(exc)), 400)
        raise web.HTTPSeeOther(f"/account/{addr}")
    return _html(render.account_form(poll=request.app[CFG].poll))


async def _account_doc(request: web.Request) -> dict[str, Any]:
    addr = v.address(request.match_info.get("address"))
    app = request.app
    s = app[STATE]

    def load() -> tuple[Any, Any, Any]:
        with app[ENGINE].connect() as conn:
            acct, positions = st.account(conn, s.chain_id, addr)
            return acct, positions, st.market_mmr(conn, s.chain_id)

    acct, positions, mmr = await asyncio.to_thread(load)
    return st.account_json(addr, acct, positions, s, mmr)


async def account_page(request: web.Request) -> web.Response:
    _only(request)
    return _html(render.account_page(await _account_doc(request), poll=request.app[CFG].poll))


async def api_account(request: web.Request) -> web.Response:
    _only(request)
    return json_response(await _account_doc(request))


async def api_fund(request: web.Request) -> web.Response:
    _only(request)
    s, cfg = request.app[STATE], request.app[CFG]
    if s.fund is None:
        return json_error(503, "no snapshot published yet")
    fund, index = s.fund, s.index
    return _cached(
        request, ("/api/insurance-fund",), _JSON_HEADERS,
        lambda now: orjson.dumps(st.fund_json(fund, now, cfg.stale_after, index)),
    )  # fmt: skip


async def api_history(request: web.Request) -> web.Response:
    _only(request, "range")
    rng = v.choice(request.query.get("range"), "range", tuple(st.RANGES), "day")
    s = request.app[STATE]
    points = s.history.get(rng, [])
    return json_response(
        {
            "range": rng,
            "seconds": st.RANGES[rng],
            "points": [
                {"t": p["t"], "block_number": p["block_number"], "balance": str(p["balance"]),
                 "coverage_bps": None if p["coverage_bps"] is None else str(p["coverage_bps"]),
                 "total_position_value": str(p["total_position_value"])}
                for p in points
            ],
        }
    )  # fmt: skip


async def api_markets(request: web.Request) -> web.Response:
    _only(request)
    s, cfg = request.app[STATE], request.app[CFG]
    return _cached(
        request, ("/api/markets",), _JSON_HEADERS,
        lambda now: orjson.dumps(st.markets_json(s.fund, s.markets, now, cfg.stale_after)),
    )  # fmt: skip


async def _paged(
    request: web.Request,
    load: Callable[[Any, int, int, int], tuple[int, list[Any]]],
    item: Callable[[Any, dict[int, str]], dict[str, Any]],
    **extra: Any,
) -> web.Response:
    """One page of a newest-first list: ``page``/``page_size`` validated, rows read off the event loop."""
    _only(request, "page", "page_size")
    cfg, s = request.app[CFG], request.app[STATE]
    page = v.integer(request.query.get("page"), "page", low=1, high=1_000_000, default=1)
    size = v.integer(request.query.get("page_size"), "page_size", low=1, high=cfg.max_page_size, default=20)

    def read() -> tuple[int, list[Any]]:
        with request.app[ENGINE].connect() as conn:
            return load(conn, s.chain_id, (page - 1) * size, size)

    total, rows = await asyncio.to_thread(read)
    items = [item(r, s.symbols) for r in rows]
    return json_response({"page": page, "page_size": size, "total": total, **extra, "items": items})


async def api_liquidations(request: web.Request) -> web.Response:
    return await _paged(request, st.liquidations, st.liquidation_json)


async def api_anomalies(request: web.Request) -> web.Response:
    from keeper.risk.anomaly import recent_flags

    return await _paged(
        request, recent_flags, st.anomaly_json, note="flags for review only: the keeper never acts on them"
    )


async def api_whales(request: web.Request) -> web.Response:
    _only(request)
    s = request.app[STATE]
    return json_response(st.whale_json(s.whales, s.symbols))


async def api_explain(request: web.Request) -> web.Response:
    _only(request, "account", "market", "size", "leverage")
    app = request.app
    cfg, s = app[CFG], app[STATE]
    account = v.address(request.query.get("account"), "account")
    market = v.integer(request.query.get("market"), "market", low=0, high=1_000_000)
    size = v.size_wad(request.query.get("size"))
    leverage = v.integer(request.query.get("leverage"), "leverage", low=0, high=1_000)
    rpc = app.get(RPC)
    if rpc is None or cfg.exchange is None:
        return json_error(503, "explain is not available on this server")
    wait = app[EXPLAIN_BUCKETS].take(client_key(request, cfg.trust_forwarded_for))
    if wait > 0:
        return json_error(429, "too many explain requests", {"Retry-After": str(max(1, math.ceil(wait)))})
    sem = app[EXPLAIN_SEM]
    if sem.locked():
        return json_error(429, "too many explain requests in flight", {"Retry-After": "1"})

    def load() -> Any:
        with app[ENGINE].connect() as conn:
            return st.account(conn, s.chain_id, account)[0]

    acct = await asyncio.to_thread(load)
    ctx = Context(
        tier=acct["tier"] if acct else 0,
        trades=acct["trades"] if acct else 0,
        tiers={t["tier"]: t for t in s.live_tiers()},
        symbols=dict(s.symbols),
        market=market,
        leverage=leverage,
        size_wad=size,
    )
    async with sem:
        try:
            answer = await asyncio.wait_for(
                simulate_trade(rpc, cfg.exchange, account, market, size, leverage, ctx), cfg.explain_timeout
            )
        except (TimeoutError, OSError, RpcTransportError) as exc:  # RpcUnavailable included
            log.warning("explain: node unavailable: %s", exc)
            return json_error(503, "the chain node is unavailable, retry later")
    answer["request"] = {
        "account": account,
        "market": market,
        "size": request.query["size"],
        "leverage": leverage,
    }
    return json_response(answer)


async def healthz(request: web.Request) -> web.Response:
    s, cfg = request.app[STATE], request.app[CFG]
    now = time.time()
    problems: list[str] = []
    body: dict[str, Any] = {"status": "ok"}
    if s.fund is None:
        problems.append("no snapshot published yet")
    else:
        age = now - float(s.fund["read_at"])
        head_age = now - float(s.fund["block_timestamp"])
        body["snapshot"] = {"block_number": s.fund["block_number"], "age_seconds": round(age, 1),
                            "head_age_seconds": round(head_age, 1)}  # fmt: skip
        if age > cfg.max_snapshot_age:
            problems.append(
                f"head stale: the latest snapshot was read {age:.0f} s ago (bound {cfg.max_snapshot_age:g} s)"
            )
        if cfg.max_head_age is not None and head_age > cfg.max_head_age:
            problems.append(f"head stale: block time is {head_age:.0f} s old (bound {cfg.max_head_age:g} s)")
        idx = s.index
        body["index"] = idx
        if idx is None:
            problems.append("index stale: nothing indexed yet")
        else:
            lag = int(s.fund["block_number"]) - int(idx["block_number"])
            body["index"] = {**idx, "lag_blocks": lag}
            if lag > cfg.max_index_lag:
                problems.append(f"index stale: {lag} blocks behind the head (bound {cfg.max_index_lag})")
    if now - s.loaded_at > max(10.0, 5 * cfg.refresh_interval):
        problems.append("database unreadable: the server's snapshot has not been refreshed")
    if problems:
        body["status"] = "unhealthy"
        body["problems"] = problems
        return json_response(body, 503)
    return json_response(body)


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(request.app[CFG].max_page_size))


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in ("app.css", "app.js"):
        raise web.HTTPNotFound()
    ctype = "text/css" if name.endswith(".css") else "application/javascript"
    resp = web.Response(body=(STATIC / name).read_bytes(), content_type=ctype, charset="utf-8")
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


# ------------------------------------------------------------------------------------ app


async def _refresher(app: web.Application) -> Any:
    s, engine, cfg = app[STATE], app[ENGINE], app[CFG]

    async def loop() -> None:
        while True:
            try:
                await asyncio.to_thread(s.refresh, engine)
            except Exception as exc:  # noqa: BLE001 - the page keeps the last state; healthz reports it
                log.warning("refresh from the database failed: %s", exc)
            await asyncio.sleep(cfg.refresh_interval)

    with contextlib.suppress(Exception):
        await asyncio.to_thread(s.refresh, engine)
    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_app(engine: Engine, cfg: ServerConfig, rpc: Any = None) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, rate_limit_middleware], client_max_size=16 * 1024)
    app[CFG] = cfg
    app[ENGINE] = engine
    app[STATE] = st.PublicState(cfg.chain_id, fund_address=cfg.fund_address)
    if rpc is not None:
        app[RPC] = rpc
    app[BUCKETS] = TokenBuckets(cfg.rate, cfg.burst)
    app[EXPLAIN_BUCKETS] = TokenBuckets(cfg.explain_rate, cfg.explain_burst)
    app[EXPLAIN_SEM] = asyncio.Semaphore(cfg.explain_concurrency)
    app[CACHE] = ResponseCache()
    app.on_response_prepare.append(_security_headers)
    app.cleanup_ctx.append(_refresher)
    r = app.router
    r.add_get("/", index)
    r.add_get("/rules", rules)
    r.add_get("/whales", whales)
    r.add_get("/account", account_form)
    r.add_get("/account/{address}", account_page)
    r.add_get("/healthz", healthz)
    r.add_get("/static/{name}", static)
    r.add_get("/api/openapi.json", openapi)
    r.add_get("/api/insurance-fund", api_fund)
    r.add_get("/api/insurance-fund/history", api_history)
    r.add_get("/api/markets", api_markets)
    r.add_get("/api/liquidations", api_liquidations)
    r.add_get("/api/accounts/{address}", api_account)
    r.add_get("/api/whales", api_whales)
    r.add_get("/api/anomalies", api_anomalies)
    r.add_get("/api/explain", api_explain)
    return app
