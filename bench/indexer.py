"""Indexer benchmark: one command, one anvil chain, four measurements (results: docs/benchmarks.md).

    .venv/bin/python bench/indexer.py            # or: make bench-indexer

1. The chain: anvil + deploy + ``keeper.devchain.simulate`` (``--traders`` traders, ``--blocks``
   blocks), saved with anvil's ``--dump-state`` under ``var/bench/`` and reloaded with
   ``--load-state`` on later runs (seconds instead of a minute).
2. On that chain, in this order, each in a fresh process (its peak RSS is its own):
   (a) raw ``eth_getLogs`` of the whole indexed range over HTTP (aiohttp, ``--raw-span``-block
       requests, bytes only, nothing parsed): the ceiling;
   (b) ``keeper index --until-head`` (the service's ``run_index``, the CLI's code path) into SQLite;
   (b0) with ``--baseline REV``: (b) with the keeper package of commit REV (its C extensions built
       as ``make setup`` builds them); with ``--repeat N``, (b) and (b0) alternate N times, each
       first in turn, and the table shows the median run of each and every pair's ratio;
   (c) the same into PostgreSQL (a throwaway database on the server of ``KEEPER_TEST_PG_URL`` or
       127.0.0.1:5432);
   (d) a straightforward web3.py indexer: ``contract.events.X.get_logs`` per event type and range,
       one ``INSERT`` per event (SQLite), run fully over the first ``--naive-events`` events;
   (e) (b) again over the first half of the chain only (``indexer.confirmations`` set so that it
       stops at the block where half the events are): peak RSS at two chain lengths.
3. A table: events, seconds, events/s, peak RSS, and the ratios against the targets.

``--jitter SECONDS`` puts every run behind a proxy (``keeper.indexer.testing.FaultProxy``, in this
process) that delays each ``eth_getLogs`` answer by a further U(0, SECONDS), seeded once: how the
pipeline copes with a remote provider's uneven latency. The targets are not reported then.

The workers are this script with a hidden first argument (``_raw``, ``_index``, ``_naive``); each
prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
if os.environ.get("BENCH_CODE"):  # (b0): the keeper package of an earlier commit, before any import of ours
    sys.path.insert(0, os.environ["BENCH_CODE"])

CACHE = REPO / "var" / "bench"
GAS_LIMIT = "1000000000"


def _maxrss_mb() -> float:
    """Peak RSS of this process: VmHWM (ru_maxrss is inherited from the parent across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ----------------------------------------------------------------------------------- the chain


def chain_dir(traders: int, blocks: int, seed: int) -> Path:
    return CACHE / f"chain-t{traders}-b{blocks}-s{seed}"


def build_chain(folder: Path, traders: int, blocks: int, seed: int) -> None:
    """Deploys and simulates on a new anvil that dumps its state into ``folder`` when it stops."""
    from web3 import Web3

    from keeper.devchain.anvil import DEV_KEYS, Anvil
    from keeper.devchain.deploy import deploy
    from keeper.devchain.simulate import simulate

    folder.mkdir(parents=True, exist_ok=True)
    state = folder / "state.json.tmp"
    t0 = time.monotonic()
    with Anvil(extra_args=["--gas-limit", GAS_LIMIT, "--dump-state", str(state)]) as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120}))
        accts = list(w3.eth.accounts)
        dep = deploy(w3, DEV_KEYS[0], accts[1], accts[2])
        r = simulate(w3, dep, "calm", traders=traders, seed=seed, blocks=blocks)
        dep.save(folder / "deployment.json")
        print(
            f"built the chain: {r.txs_sent:,} txs in {r.mined_blocks} blocks "
            f"({time.monotonic() - t0:.1f} s); saving anvil's state",
            flush=True,
        )
        # anvil writes the state when it exits: give it time (Anvil.stop kills after 5 s; ~1 GB here)
        assert node.proc is not None
        node.proc.terminate()
        code = node.proc.wait(timeout=600)
    if code != 0 or not state.exists():
        raise SystemExit(f"anvil exited with {code} while dumping its state to {state}")
    state.rename(folder / "state.json")  # complete only once anvil has written it on exit


# ----------------------------------------------------------------------------------- workers


def worker_raw(rpc: str, start: int, head: int, span: int) -> dict[str, Any]:
    import aiohttp
    import orjson

    from keeper.chain.deployments import Deployment
    from keeper.indexer.target import IndexTarget

    target = IndexTarget.from_deployment(Deployment.load(os.environ["BENCH_DEPLOYMENT"]))
    addresses = target.addresses

    async def main() -> tuple[int, int, list[tuple[int, int]]]:
        n = size = 0
        per_range: list[tuple[int, int]] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
            for a in range(start, head + 1, span):
                b = min(head, a + span - 1)
                body = orjson.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "eth_getLogs",
                        "params": [{"fromBlock": hex(a), "toBlock": hex(b), "address": addresses}],
                    }
                )
                async with s.post(rpc, data=body, headers={"Content-Type": "application/json"}) as r:
                    raw = await r.read()
                k = raw.count(b'"logIndex"')
                n += k
                size += len(raw)
                per_range.append((b, k))
        return n, size, per_range

    t0 = time.monotonic()
    n, size, per_range = asyncio.run(main())
    dt = time.monotonic() - t0
    return {"events": n, "seconds": dt, "bytes": size, "per_range": per_range, "rss_mb": _maxrss_mb()}


class ChildrenRss:
    """Peak of the summed RSS of a process's descendants (its decode workers), sampled every 100 ms, and
    peak of the bytes waiting in its spool (``keeper.indexer.spool``: memory too, in no process's RSS).

    It runs in the bench's own process, not in the measured one: a thread there would leave the keeper
    with two threads, and the keeper forks its decode workers only from a single-threaded process.
    """

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.peak_mb = 0.0
        self.spool_peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ChildrenRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            total, todo = 0.0, _children(self.pid)
            while todo:  # descendants: the workers (and a fork server and the workers it forked)
                pid = todo.pop()
                todo.extend(_children(pid))
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) / 1024.0
                except OSError:
                    continue
            self.peak_mb = max(self.peak_mb, total)
            spooled = 0
            for f in Path("/dev/shm").glob(f"zanbara-keeper-spool-{self.pid}/*"):
                with contextlib.suppress(OSError):
                    spooled += f.stat().st_size
            self.spool_peak_mb = max(self.spool_peak_mb, spooled / 1e6)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        pass
    return out


def worker_index(rpc: str, db_url: str, deployment: str, confirmations: int = 0) -> dict[str, Any]:
    os.environ.update(
        KEEPER_CONFIG=str(CACHE / "none.toml"),
        KEEPER_DATABASE__URL=db_url,
        KEEPER_CHAIN__RPC_URLS=json.dumps([rpc]),
        KEEPER_CHAIN__DEPLOYMENTS_FILE=deployment,
        KEEPER_INDEXER__CONFIRMATIONS=str(confirmations),  # > 0: stops that many blocks below the head
    )
    from keeper.config import load_settings
    from keeper.indexer.service import open_database, run_index
    from keeper.store.models import EVENTS

    settings = load_settings()
    engine = open_database(settings, migrate=True)  # the schema first: not part of the timing
    engine.dispose()
    rss0 = _maxrss_mb()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    cp = run_index(settings, until_head=True, progress=False)
    dt = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    assert cp is not None
    from sqlalchemy import func, select

    engine = open_database(settings)
    with engine.connect() as conn:
        n = int(conn.execute(select(func.count()).select_from(EVENTS)).scalar() or 0)
    engine.dispose()
    return {
        "events": n,
        "seconds": dt,
        "rss_mb": _maxrss_mb(),
        "rss_before_mb": rss0,
        "checkpoint": cp.number,
        "cpu_seconds": cpu,  # this process only (the writer), not its decode workers
    }


def worker_naive(rpc: str, db_path: str, deployment: str, start: int, stop: int, span: int) -> dict[str, Any]:
    """What a first indexer usually looks like: web3's contract events and one INSERT per event."""
    import sqlite3

    from web3 import Web3

    from keeper.chain.deployments import Deployment
    from keeper.indexer.abis import load_abi
    from keeper.indexer.target import IndexTarget

    target = IndexTarget.from_deployment(Deployment.load(deployment))
    w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 600}))
    contracts = [
        w3.eth.contract(address=Web3.to_checksum_address(addr), abi=load_abi(name))
        for addr, name in sorted(target.contracts.items())
    ]
    db = sqlite3.connect(db_path)
    db.execute(
        "CREATE TABLE events (block_number INTEGER, block_hash TEXT, tx_hash TEXT, log_index INTEGER,"
        " address TEXT, event_name TEXT, args TEXT, PRIMARY KEY (block_number, log_index))"
    )

    def jsonable(v: Any) -> Any:
        if isinstance(v, bytes):
            return "0x" + v.hex()
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**53:
            return str(v)
        if isinstance(v, Mapping):  # web3's AttributeDict for tuples
            return {k: jsonable(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [jsonable(x) for x in v]
        return v

    n = 0
    t0 = time.monotonic()
    for a in range(start, stop + 1, span):
        b = min(stop, a + span - 1)
        for c in contracts:
            for ev in c.events:
                for log in ev().get_logs(from_block=a, to_block=b):
                    db.execute(
                        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            log["blockNumber"],
                            log["blockHash"].hex(),
                            log["transactionHash"].hex(),
                            log["logIndex"],
                            log["address"],
                            log["event"],
                            json.dumps(jsonable(dict(log["args"]))),
                        ),
                    )
                    n += 1
        db.commit()
    dt = time.monotonic() - t0
    db.close()
    return {"events": n, "seconds": dt, "rss_mb": _maxrss_mb()}


def _worker(argv: list[str]) -> int:
    kind, args = argv[0], json.loads(argv[1])
    fn = {"_raw": worker_raw, "_index": worker_index, "_naive": worker_naive}[kind]
    out = fn(**args)
    # which keeper package ran: (b0) must be the baseline's (see the check in main)
    out["keeper_package"] = str(Path(sys.modules["keeper"].__file__ or "").parent)
    print(json.dumps(out), flush=True)
    return 0


def run_worker(kind: str, env: dict[str, str] | None = None, **args: Any) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), kind, json.dumps(args)]
    with (
        subprocess.Popen(
            cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, text=True
        ) as p,
        ChildrenRss(p.pid) as children,
    ):
        out, _ = p.communicate()
    if p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, cmd, out)
    r = dict(json.loads(out.strip().splitlines()[-1]))
    if kind == "_index":
        r["workers_rss_mb"] = children.peak_mb  # the decode workers together, sampled
        r["spool_peak_mb"] = children.spool_peak_mb
    return r


# ----------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/indexer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--traders", type=int, default=2_000)
    p.add_argument("--blocks", type=int, default=720, help="simulated blocks (about 300 events each)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--min-events", type=int, default=200_000)
    p.add_argument("--naive-events", type=int, default=50_000, help="events the web3.py baseline indexes")
    p.add_argument("--raw-span", type=int, default=20, help="blocks per raw eth_getLogs request")
    p.add_argument("--db", default="sqlite,postgres")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached chain")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--baseline",
        metavar="REV",
        help="also run (b0): keeper index into SQLite with the keeper package of git commit REV",
    )
    p.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="every run through a proxy that delays each eth_getLogs answer by U(0, SECONDS) more, as a "
        "remote provider's uneven latency does (the targets are measured without it)",
    )
    p.add_argument("--skip", default="", help="comma-separated runs to leave out while iterating: d, e")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="with --baseline: run (b) and (b0) alternately this many times; the table shows the median "
        "run of each and the ratios of every pair",
    )
    args = p.parse_args(argv)

    from keeper.chain.deployments import Deployment
    from keeper.devchain.anvil import Anvil
    from keeper.store.testdb import throwaway_database

    folder = chain_dir(args.traders, args.blocks, args.seed)
    if args.rebuild or not (folder / "state.json").exists():
        build_chain(folder, args.traders, args.blocks, args.seed)
    else:
        print(f"reusing the chain cached in {folder.relative_to(REPO)}", flush=True)
    deployment = str(folder / "deployment.json")
    dep = Deployment.load(deployment)
    start = int(dep.deployment_block)
    results: dict[str, dict[str, Any]] = {}
    t_load = time.monotonic()
    load = ["--gas-limit", GAS_LIMIT, "--load-state", str(folder / "state.json")]
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(Anvil(extra_args=load, startup_timeout=180))  # ~1 GB: slow when busy
        from web3 import Web3

        head = Web3(Web3.HTTPProvider(node.url)).eth.block_number
        rpc = node.url
        if args.jitter > 0:
            from keeper.indexer.testing import FaultProxy

            proxy = stack.enter_context(FaultProxy(node.url, jitter=args.jitter))
            rpc = proxy.url
            print(f"every run through a proxy adding U(0, {args.jitter:g}) s to each eth_getLogs", flush=True)
        print(
            f"anvil loaded the chain in {time.monotonic() - t_load:.1f} s: blocks {start}..{head}", flush=True
        )
        env = {"BENCH_DEPLOYMENT": deployment}

        raw = run_worker("_raw", env, rpc=rpc, start=start, head=head, span=args.raw_span)
        per_range = raw.pop("per_range")
        results["a_raw"] = raw
        print(
            f"(a) raw eth_getLogs: {raw['events']:,} events, {raw['bytes'] / 1e6:,.0f} MB in "
            f"{raw['seconds']:.2f} s",
            flush=True,
        )
        if raw["events"] < args.min_events:
            print(
                f"WARNING: the chain holds {raw['events']:,} events, fewer than {args.min_events:,}: "
                "raise --blocks",
                flush=True,
            )
        # the block where the first --naive-events events end, and the chain's middle (by events)
        naive_stop, mid_block, acc = head, None, 0
        for b, k in per_range:
            acc += k
            if mid_block is None and acc >= raw["events"] // 2:
                mid_block = b
            if acc >= args.naive_events:
                naive_stop = min(naive_stop, b)

        def index(kind: str) -> dict[str, Any]:
            with throwaway_database(kind, CACHE / "db") as url:
                r = run_worker("_index", env, rpc=rpc, db_url=url, deployment=deployment)
            print(
                f"({'b' if kind == 'sqlite' else 'c'}) keeper index --until-head into {kind}: "
                f"{r['events']:,} events in {r['seconds']:.2f} s, peak RSS {r['rss_mb']:.0f} MB "
                f"(decode workers {r['workers_rss_mb']:.0f} MB, spool {r['spool_peak_mb']:.0f} MB)",
                flush=True,
            )
            return r

        def index_baseline(code: Path) -> dict[str, Any]:
            with throwaway_database("sqlite", CACHE / "db") as url:
                r = run_worker(
                    "_index",
                    {**env, "BENCH_CODE": str(code)},
                    rpc=rpc,
                    db_url=url,
                    deployment=deployment,
                )
            r["rev"] = args.baseline
            if Path(r["keeper_package"]).resolve() != (code / "keeper").resolve():
                raise SystemExit(f"(b0) ran the keeper of {r['keeper_package']}, not the baseline's {code}")
            print(
                f"(b0) the same with the keeper of {args.baseline}: {r['events']:,} events in "
                f"{r['seconds']:.2f} s, peak RSS {r['rss_mb']:.0f} MB",
                flush=True,
            )
            return r

        code = baseline_tree(args.baseline) if args.baseline else None
        kinds = [k.strip() for k in args.db.split(",") if k.strip()]
        pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for kind in kinds:
            if kind == "sqlite" and code is not None:
                # (b) and (b0) alternate, --repeat times, each first in turn: the two of a pair ran
                # under the same machine load, and neither always has the warmer node
                for i in range(max(1, args.repeat)):
                    if i % 2 == 0:
                        b = index(kind)
                        pairs.append((b, index_baseline(code)))
                    else:
                        b0 = index_baseline(code)
                        pairs.append((index(kind), b0))
                results["index_sqlite"] = _median_run([b for b, _ in pairs])
                results["b0_baseline"] = _median_run([b0 for _, b0 in pairs])
                results["b0_baseline"]["pair_ratios"] = [b0["seconds"] / b["seconds"] for b, b0 in pairs]
            else:
                results[f"index_{kind}"] = index(kind)
        if code is not None and not pairs:  # no SQLite run: (b0) alone
            results["b0_baseline"] = index_baseline(code)
        skip = {k.strip() for k in args.skip.split(",") if k.strip()}
        naive_db = CACHE / "db" / "naive.sqlite"
        naive_db.parent.mkdir(parents=True, exist_ok=True)
        naive_db.unlink(missing_ok=True)
        r = (
            {}
            if "d" in skip
            else run_worker(
                "_naive",
                env,
                rpc=rpc,
                db_path=str(naive_db),
                deployment=deployment,
                start=start,
                stop=naive_stop,
                span=args.raw_span,
            )
        )
        naive_db.unlink(missing_ok=True)
        if r:
            results["d_naive"] = r
            print(
                f"(d) web3.py naive: {r['events']:,} events (blocks {start}..{naive_stop}) "
                f"in {r['seconds']:.2f} s",
                flush=True,
            )
        if mid_block is not None and "e" not in skip:
            with throwaway_database("sqlite", CACHE / "db") as url:
                r = run_worker(
                    "_index",
                    env,
                    rpc=rpc,
                    db_url=url,
                    deployment=deployment,
                    confirmations=head - mid_block,
                )
            results["e_half_sqlite"] = r
            print(
                f"(e) keeper index, first half only (blocks {start}..{mid_block}) into sqlite: "
                f"{r['events']:,} events, peak RSS {r['rss_mb']:.0f} MB",
                flush=True,
            )

    print()
    print(table(results, jitter=args.jitter))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median time (the lower middle one of an even count), with every run's seconds."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[(len(ordered) - 1) // 2], "all_seconds": [r["seconds"] for r in runs]}


def baseline_tree(rev: str) -> Path:
    """The ``keeper`` package of commit ``rev`` (git archive), next to this checkout's contracts."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    folder = CACHE / "baseline" / commit  # by commit: a name like HEAD moves
    if not (folder / "keeper").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev, "keeper"], cwd=REPO, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
        setup = subprocess.run(["git", "show", f"{rev}:setup.py"], cwd=REPO, capture_output=True)
        if setup.returncode == 0:  # the baseline's C extensions, built as make setup builds them
            (folder / "setup.py").write_bytes(setup.stdout)
            subprocess.run(
                [sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=folder, check=True
            )
    link = folder / "contracts"
    if not link.exists():
        link.symlink_to(REPO / "contracts")  # the ABIs (contracts/out)
    # byte-compiled like this checkout (`make bytecode`): the runs compare code, not module compiles
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "keeper"], cwd=folder, check=True, capture_output=True
    )
    return folder


def table(res: dict[str, dict[str, Any]], jitter: float = 0.0) -> str:
    def rate(r: dict[str, Any]) -> float:
        return r["events"] / r["seconds"] if r["seconds"] else 0.0

    names = {
        "a_raw": "(a) raw eth_getLogs, bytes only (ceiling)",
        "b0_baseline": "(b0) = (b) with the keeper of the baseline commit",
        "index_sqlite": "(b) keeper index --until-head, SQLite",
        "index_postgres": "(c) keeper index --until-head, PostgreSQL",
        "d_naive": "(d) web3.py get_logs + row-by-row INSERT",
        "e_half_sqlite": "(e) = (b) on the chain's first half only",
    }
    lines = ["| run | events | seconds | events/s | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    for k, label in names.items():
        r = res.get(k)
        if r is not None:
            lines.append(
                f"| {label} | {r['events']:,} | {r['seconds']:.2f} | {rate(r):,.0f} | {r['rss_mb']:.0f} |"
            )
    a, d = res.get("a_raw"), res.get("d_naive")
    lines.append("")
    for k in ("index_sqlite", "index_postgres"):
        r = res.get(k)
        if r is None or jitter > 0:  # the targets are for the node's own speed, without the proxy
            continue
        parts = [k.split("_")[1] + ":"]
        if a is not None:
            parts.append(f"{rate(r) / rate(a):.0%} of (a) (target >= 50%)")
        if d is not None:
            parts.append(f"{rate(r) / rate(d):.1f}x (d) (target >= 20x)")
        lines.append("  ".join(parts))
    b0 = res.get("b0_baseline")
    if b0 is not None and res.get("index_sqlite") is not None:
        line = f"sqlite: {rate(res['index_sqlite']) / rate(b0):.2f}x (b0) ({b0['rev']})"
        ratios = b0.get("pair_ratios", [])
        if len(ratios) > 1:
            line += (
                f"; pair by pair {', '.join(f'{x:.2f}x' for x in ratios)}, "
                f"median {statistics.median(ratios):.2f}x"
            )
        lines.append(line)
    b, e = res.get("index_sqlite"), res.get("e_half_sqlite")
    if b is not None and e is not None:
        lines.append(
            f"peak RSS: {e['rss_mb']:.0f} MB for {e['events']:,} events, {b['rss_mb']:.0f} MB for "
            f"{b['events']:,} events (x{b['events'] / max(1, e['events']):.1f} events, "
            f"x{b['rss_mb'] / e['rss_mb']:.2f} memory)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        raise SystemExit(_worker(sys.argv[1:]))
    from keeper.errors import exit_code

    raise SystemExit(exit_code(main))
