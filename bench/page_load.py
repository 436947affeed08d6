"""Public page under load: `.venv/bin/python bench/page_load.py` (results: docs/benchmarks.md).

Options: --traders N (1,000), --seed S (11), --conns C (32 concurrent keep-alive connections),
--max-seconds T (180), --max-requests R (2,000,000), --ceiling-seconds (15).

Three runs, in this order, in one command:

A. the crash scenario under ``keeper run`` on a fresh anvil (bench/_crash.py: deploy, calm market of
   N traders, interval mining 1 s blocks of 30M gas, keeper started, paced ``crash``), no page load:
   the liquidation latency baseline;
B. the same on a fresh chain with the same seed, while a separate process (this script, ``_load``:
   aiohttp client, C keep-alive connections, loopback only, bounded by R requests and T seconds) loads
   ``/api/insurance-fund`` and ``/`` alternately from just before the crash until every account is
   liquidated: requests/s, p50/p99 latency per endpoint, and the liquidation latency again;
C. the ceiling of this machine + client: the same loader for --ceiling-seconds against a bare aiohttp
   server (``_serve``) answering the two paths with the bytes the keeper served in B, precomputed.

Then the handlers' own cost, in-process, on B's database: ``fund_json`` + orjson, ``render.index_page``
(cProfile's top entries for the page). The server's rate limiter is lifted for the run (every loader
connection is 127.0.0.1, one token bucket): KEEPER_SERVER__RATE_LIMIT_PER_SECOND/BURST.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _crash import REPO, pct, run_crash, table_rows  # noqa: E402

from keeper.errors import exit_code  # noqa: E402

PATHS = ("/api/insurance-fund", "/")
BODIES = REPO / "var" / "bench" / "page-bodies"


# ----------------------------------------------------------------------------------- workers


def worker_load(base: str, conns: int, max_requests: int, max_seconds: float, save_bodies: bool) -> dict:
    import aiohttp

    lat: dict[str, list[float]] = {p: [] for p in PATHS}
    status: dict[str, dict[int, int]] = {p: {} for p in PATHS}
    errors = 0
    sent = 0
    stop = asyncio.Event()
    early: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: early.append(1))

    async def main() -> float:
        nonlocal errors, sent
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        if early:
            stop.set()
        connector = aiohttp.TCPConnector(limit=conns, force_close=False)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
            if save_bodies:
                BODIES.mkdir(parents=True, exist_ok=True)
                for i, p in enumerate(PATHS):
                    async with s.get(base + p) as r:
                        (BODIES / f"{i}.bin").write_bytes(await r.read())
                        (BODIES / f"{i}.type").write_text(r.headers.get("Content-Type", "text/plain"))
            t_end = time.monotonic() + max_seconds

            async def one(k: int) -> None:
                nonlocal errors, sent
                i = k
                while not stop.is_set() and sent < max_requests and time.monotonic() < t_end:
                    p = PATHS[i % 2]
                    i += 1
                    sent += 1
                    t0 = time.perf_counter()
                    try:
                        async with s.get(base + p) as r:
                            await r.read()
                            code = r.status
                    except (aiohttp.ClientError, TimeoutError):
                        errors += 1
                        continue
                    lat[p].append(time.perf_counter() - t0)
                    status[p][code] = status[p].get(code, 0) + 1

            t0 = time.monotonic()
            await asyncio.gather(*(one(k) for k in range(conns)))
            return time.monotonic() - t0

    seconds = asyncio.run(main())
    out: dict[str, Any] = {"seconds": seconds, "errors": errors, "conns": conns}
    for p in PATHS:
        xs = lat[p]
        out[p] = {
            "n": len(xs),
            "rps": len(xs) / seconds if seconds else 0.0,
            "p50_ms": pct(xs, 50) * 1e3,
            "p99_ms": pct(xs, 99) * 1e3,
            "max_ms": max(xs, default=0.0) * 1e3,
            "status": {str(k): v for k, v in status[p].items()},
        }
    out["total_rps"] = sum(out[p]["n"] for p in PATHS) / seconds if seconds else 0.0
    return out


def worker_serve(port: int) -> dict:
    """A bare aiohttp server: the two paths answered with precomputed bytes (the ceiling)."""
    from aiohttp import web

    bodies = {
        p: ((BODIES / f"{i}.bin").read_bytes(), (BODIES / f"{i}.type").read_text())
        for i, p in enumerate(PATHS)
    }

    def handler(path: str) -> Any:
        body, ctype = bodies[path]
        ct = ctype.split(";")[0]

        async def h(_r: web.Request) -> web.Response:
            return web.Response(body=body, content_type=ct)

        return h

    app = web.Application()
    for p in PATHS:
        app.router.add_get(p, handler(p))
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    return {}


def _worker(argv: list[str]) -> int:
    kind, args = argv[0], json.loads(argv[1])
    fn = {"_load": worker_load, "_serve": worker_serve}[kind]
    print(json.dumps(fn(**args)), flush=True)
    return 0


def spawn(kind: str, **args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), kind, json.dumps(args)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 30, stop: bool = True) -> dict[str, Any]:
    if stop and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    return dict(json.loads(out.strip().splitlines()[-1]))


# ----------------------------------------------------------------------------------- handler cost


def handler_cost(db: Path, n: int = 2_000) -> dict[str, Any]:
    import cProfile
    import io
    import pstats

    import orjson

    from keeper.api import render
    from keeper.api import state as st
    from keeper.store.engine import make_engine

    engine = make_engine(f"sqlite:///{db}")
    s = st.PublicState(chain_id=31337)
    t0 = time.perf_counter()
    s.refresh(engine)
    t_refresh = time.perf_counter() - t0
    engine.dispose()
    assert s.fund is not None
    t0 = time.perf_counter()
    for _ in range(n):
        orjson.dumps(st.fund_json(s.fund, time.time(), 30.0, s.index))
    t_fund = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        render.index_page(s, stale_after=30.0, poll=3.0, rng="day").encode()
    t_page = (time.perf_counter() - t0) / n
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        render.index_page(s, stale_after=30.0, poll=3.0, rng="day")
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(8)
    return {"refresh_ms": t_refresh * 1e3, "fund_us": t_fund * 1e6, "page_us": t_page * 1e6,
            "profile": buf.getvalue()}  # fmt: skip


# ----------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/page_load.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--traders", type=int, default=1_000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--max-seconds", type=float, default=180.0)
    p.add_argument("--max-requests", type=int, default=2_000_000)
    p.add_argument("--ceiling-seconds", type=float, default=15.0)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    print(f"A. crash without page load ({args.traders:,} traders, seed {args.seed})", flush=True)
    a = run_crash(args.traders, args.seed)
    loaders: list[subprocess.Popen[str]] = []

    def start_load(port: int) -> Any:
        loaders.append(
            spawn("_load", base=f"http://127.0.0.1:{port}", conns=args.conns, max_requests=args.max_requests,
                  max_seconds=args.max_seconds, save_bodies=True)
        )  # fmt: skip
        time.sleep(0.5)
        return lambda: finish(loaders[0])

    print(f"B. crash with page load ({args.conns} connections)", flush=True)
    b = run_crash(args.traders, args.seed, on_ready=start_load)
    load = b.side
    print("C. ceiling: the same loader against a bare aiohttp server (precomputed bytes)", flush=True)
    from keeper.devchain.anvil import free_port

    port = free_port()
    server = spawn("_serve", port=port)
    try:
        from _crash import get

        deadline = time.monotonic() + 30
        while get(f"http://127.0.0.1:{port}/") != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        ceiling = finish(
            spawn("_load", base=f"http://127.0.0.1:{port}", conns=args.conns, max_requests=args.max_requests,
                  max_seconds=args.ceiling_seconds, save_bodies=False),
            timeout=args.ceiling_seconds + 60, stop=False,
        )  # fmt: skip
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)
    cost = handler_cost(b.workdir / "keeper.db") if b.workdir else None

    sa, sb = a.summary(), b.summary()
    lines = [
        f"Machine: {os.cpu_count()} cores. {args.traders:,} traders, seed {args.seed}, 1 s blocks of 30M gas, "
        f"{args.conns} keep-alive connections.",
        "",
        "| endpoint (B: keeper run, during the crash) | requests/s | p50 ms | p99 ms | max ms | "
        "ceiling req/s (C) | keeper ÷ ceiling | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for path in PATHS:
        r, c = load[path], ceiling[path]
        ok = "ok" if r["rps"] >= 2_000 and r["p99_ms"] < 50 else "MISSED"
        lines.append(
            f"| `{path}` | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.0f} | "
            f"{c['rps']:,.0f} | {r['rps'] / c['rps']:.2f} | ≥ 2,000 req/s, p99 < 50 ms ({ok}) |"
        )
    lines.append(
        f"| both (alternating) | {load['total_rps']:,.0f} | | | | {ceiling['total_rps']:,.0f} | "
        f"{load['total_rps'] / ceiling['total_rps']:.2f} | |"
    )
    lines.append("")
    lines.append(
        f"Load: {load['seconds']:.1f} s, statuses "
        + "; ".join(f"`{p}` {load[p]['status']}" for p in PATHS)
        + f", client errors {load['errors']}. Ceiling p50/p99: "
        + "; ".join(f"`{p}` {ceiling[p]['p50_ms']:.1f}/{ceiling[p]['p99_ms']:.1f} ms" for p in PATHS)
    )
    lines += [
        "",
        "| liquidation latency (keeper's Liquidated events) | events | blocks p50 / p99 / max | mean blocks "
        "| seconds p50 / p99 / max | left liquidatable |",
        "|---|---:|---:|---:|---:|---:|",
        table_rows("A. without page load", sa),
        table_rows("B. with page load", sb),
        "",
        f"Ratio B ÷ A: mean latency {sb['mean_blocks'] / sa['mean_blocks']:.2f}×, max "
        f"{sb['max_blocks'] / sa['max_blocks']:.2f}× (target: unchanged). Liquidations: A {sa['liquidations']}, "
        f"B {sb['liquidations']}; liquidation gas A {sa['gas']:,} in {sa['txs']} txs, B {sb['gas']:,} in "
        f"{sb['txs']} txs.",
    ]
    if cost is not None:
        lines += [
            "",
            f"Handler cost in-process (B's database, no HTTP): fund_json + orjson {cost['fund_us']:.0f} µs, "
            f"index_page {cost['page_us']:.0f} µs per request; PublicState.refresh {cost['refresh_ms']:.1f} ms.",
        ]
    text = "\n".join(lines)
    print()
    print(text)
    if cost is not None:
        print("\ncProfile of render.index_page (300 calls, by own time):\n" + cost["profile"])
    if args.json:
        args.json.write_text(
            json.dumps(
                {"A": sa, "B": sb, "load": load, "ceiling": ceiling, "cost": cost}, indent=2, default=str
            )
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        raise SystemExit(_worker(sys.argv[1:]))
    raise SystemExit(exit_code(main))
