"""What the SQLite writer's inserts cost, index by index (results: docs/benchmarks.md).

The indexer's writer is the bottleneck of a backfill into SQLite; this measures its floor: the rows of
the indexer benchmark's chain (``bench/indexer.py``'s cached anvil state, built by its first run),
prepared once in this process exactly as the decode workers prepare them, then inserted into a fresh
database of the current schema (``events`` and the history tables, 4 ranges per transaction, as a
backfill commits them), once as the schema is and once without each secondary index of ``events``
(and without all of them, and without the position index too). Times are this process's CPU seconds
of the inserts and commits; the variants are compared with the schema as it is, in the same run.

    .venv/bin/python bench/sqlite_writes.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from indexer import GAS_LIMIT, chain_dir  # noqa: E402

from keeper.errors import KeeperError, exit_code  # noqa: E402

SECONDARY = ["ix_events_account", "ix_events_market", "ix_events_name"]
VARIANTS: list[tuple[str, list[str]]] = [
    ("schema as it is", []),
    *[(f"without {ix}", [ix]) for ix in SECONDARY],
    ("without the 3 secondary indexes", SECONDARY),
    ("without any index on events", [*SECONDARY, "uq_events_position"]),
]


def prepared_ranges(rpc: str, deployment: str, span: int) -> list[Any]:
    """The chain's logs in ``span``-block ranges, prepared as the decode workers prepare them."""
    import orjson
    import requests

    from keeper.chain.deployments import Deployment
    from keeper.indexer.prepare import Prepared, prepare_raw
    from keeper.indexer.target import IndexTarget

    target = IndexTarget.from_deployment(Deployment.load(deployment))
    s = requests.Session()
    head = int(
        s.post(rpc, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}).json()[
            "result"
        ],
        16,
    )
    out = []
    for a in range(target.start_block, head + 1, span):
        b = min(head, a + span - 1)
        q = {"fromBlock": hex(a), "toBlock": hex(b), "address": target.addresses}
        body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [q]})
        raw = s.post(rpc, data=body, headers={"Content-Type": "application/json"}).content
        p = prepare_raw(raw, a, b, {}, target.chain_id, target.contracts)
        if not isinstance(p, Prepared) or p.problem or p.missing_timestamps:
            raise KeeperError(f"blocks {a}-{b} could not be prepared: {p}")
        out.append(p)
    return out


def insert_all(ranges: list[Any], drop: list[str], folder: Path) -> float:
    """CPU seconds of inserting every range's rows into a fresh database without the ``drop`` indexes."""
    from keeper.indexer.derive import _wire_of
    from keeper.indexer.prepare import EVENT_COLUMNS
    from keeper.store.engine import make_engine
    from keeper.store.migrate import upgrade
    from keeper.store.models import TABLES

    path = folder / f"writes-{len(drop)}-{'-'.join(drop)}.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    tables = {t.name: t for t in TABLES}
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-65536")  # the writer's settings (keeper.indexer.writer)
        page = int(db.execute("PRAGMA page_size").fetchone()[0])
        db.execute(f"PRAGMA wal_autocheckpoint={(40 << 20) // page}")
        for ix in drop:
            db.execute(f"DROP INDEX {ix}")

        def insert(name: str, cols: list[str], rows: list[Any]) -> None:
            db.executemany(
                f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows
            )

        t0 = time.process_time()
        for i in range(0, len(ranges), 4):
            db.execute("BEGIN")
            for p in ranges[i : i + 4]:
                insert("events", EVENT_COLUMNS, p.events)
                for name, rows in p.folded.appends.items():
                    insert(name, _wire_of(tables[name])[0], rows)
            db.execute("COMMIT")
        return time.process_time() - t0
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/sqlite_writes.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--repeat", type=int, default=2, help="runs of each variant (the median is shown)")
    p.add_argument("--span", type=int, default=20, help="blocks per range")
    args = p.parse_args(argv)
    from keeper.devchain.anvil import Anvil

    folder = chain_dir(2_000, 720, 1)
    if not (folder / "state.json").exists():
        raise KeeperError(f"no cached chain in {folder}: run bench/indexer.py once first (it builds it)")
    load = ["--gas-limit", GAS_LIMIT, "--load-state", str(folder / "state.json")]
    with Anvil(extra_args=load, startup_timeout=180) as node:
        t0 = time.monotonic()
        ranges = prepared_ranges(node.url, str(folder / "deployment.json"), args.span)
    events = sum(r.count for r in ranges)
    history = sum(len(rows) for r in ranges for rows in r.folded.appends.values())
    print(
        f"{events:,} events and {history:,} history rows prepared in {time.monotonic() - t0:.1f} s",
        flush=True,
    )
    results: dict[str, list[float]] = {name: [] for name, _ in VARIANTS}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for _ in range(args.repeat):  # interleaved: the machine's drift hits every variant alike
            for name, drop in VARIANTS:
                results[name].append(insert_all(ranges, drop, Path(tmp)))
    base = statistics.median(results[VARIANTS[0][0]])
    print("\n| inserts of every row, 4 ranges per transaction | CPU s (median) | vs the schema as it is |")
    print("|---|---:|---:|")
    for name, _ in VARIANTS:
        t = statistics.median(results[name])
        print(f"| {name} | {t:.2f} | {t / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_code(lambda: main(sys.argv[1:])))
