"""Reorg rollback of a real index on SQLite: ``Deriver.rollback`` of the last blocks, as the indexer
does it when a reorg replaces them (the crash-day drill: a 3-block reorg of a 2,000-trader book).

One run: a fresh anvil, the deployment, ``--traders`` seeded traders (seed 11) and ``--blocks`` calm
blocks (4 % of the traders act per block), indexed to the head into SQLite. Then, on copies of that
database, ``rollback`` above ``head - depth`` (nothing committed) with:

- **baseline**: the latest-event lookups ordered by ``block_number`` (SQLite then walks
  ``uq_events_position`` backwards through every event when the key has none of the kind);
- **current**: ``keeper.indexer.derive`` as it is (``block_number + 0``: the key's own index).

Both must return the same rows (checked: the derived tables after each rollback are compared). Prints
seconds per rollback (median of ``--repeat``) and the ratio.

    .venv/bin/python bench/reorg_rollback.py [--traders 2000] [--blocks 4] [--depth 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from eth_account import Account  # noqa: E402
from sqlalchemy import select  # noqa: E402

from keeper.chain.connect import connect  # noqa: E402
from keeper.devchain.anvil import DEV_KEYS, Anvil  # noqa: E402
from keeper.devchain.deploy import deploy  # noqa: E402
from keeper.devchain.simulate import simulate  # noqa: E402
from keeper.errors import exit_code  # noqa: E402
from keeper.indexer import derive  # noqa: E402
from keeper.indexer.decode import EventDecoder  # noqa: E402
from keeper.indexer.derive import Deriver  # noqa: E402
from keeper.indexer.records import LogRecord  # noqa: E402
from keeper.indexer.target import IndexTarget  # noqa: E402
from keeper.indexer.testing import index_to_head, open_store  # noqa: E402
from keeper.store.engine import make_engine  # noqa: E402
from keeper.store.models import EVENTS  # noqa: E402


class BaselineDeriver(Deriver):
    """The lookup as it was: ORDER BY block_number DESC, log_index DESC (no ``+ 0``)."""

    def _latest(self, conn: Any, chain_id: int, ts: Any, key: Any, handlers: Any) -> LogRecord | None:
        e = EVENTS.c
        best: LogRecord | None = None
        filt = ts.event_filter(key) if ts.event_filter is not None else None
        for contract, name in handlers:
            q = select(EVENTS).where(e.chain_id == chain_id, e.event_name == name, e.contract == contract)
            if filt is not None:
                q = q.where(*(e[col] == v for col, v in filt.items()))
            q = q.order_by(e.block_number.desc(), e.log_index.desc())
            if filt is not None:
                row = conn.execute(q.limit(1)).mappings().first()
                cand = self.record_from_row(row) if row is not None else None
            else:
                cand = None
                for row in conn.execute(q).mappings():
                    rec = self.record_from_row(row)
                    if ts.key(rec) == key:
                        cand = rec
                        break
            if cand is not None and (best is None or cand.position > best.position):
                best = cand
        return best


def rollback_once(db: Path, cls: type[Deriver], fork: int, folder: Path) -> tuple[float, int, Any]:
    copy = folder / f"copy-{cls.__name__}.db"
    shutil.copyfile(db, copy)
    engine = make_engine(f"sqlite:///{copy}")
    try:
        d = cls(EventDecoder.for_contracts())
        with engine.connect() as conn:
            tx = conn.begin()
            t0 = time.perf_counter()
            removed = d.rollback(conn, 31337, fork)
            dt = time.perf_counter() - t0
            state = {t.table.name: sorted(map(tuple, conn.execute(select(t.table)).all())) for t in d.tables}
            tx.rollback()
        return dt, removed, state
    finally:
        engine.dispose()
        copy.unlink(missing_ok=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traders", type=int, default=2000)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    assert derive.Deriver._latest is not BaselineDeriver._latest
    with tempfile.TemporaryDirectory() as tmp, Anvil() as anvil:
        folder = Path(tmp)
        w3 = connect(anvil.url, 31337)
        dep = deploy(
            w3, DEV_KEYS[0], Account.from_key(DEV_KEYS[1]).address, Account.from_key(DEV_KEYS[2]).address
        )
        simulate(w3, dep, "calm", traders=a.traders, seed=11, blocks=a.blocks)
        db = folder / "index.db"
        engine, store = open_store(f"sqlite:///{db}", IndexTarget.from_deployment(dep))
        run = index_to_head(anvil.url, store)
        engine.dispose()
        head = run.checkpoint.number
        fork = head - a.depth
        times: dict[str, list[float]] = {"baseline": [], "current": []}
        states: dict[str, Any] = {}
        removed = 0
        for _ in range(a.repeat):
            for name, cls in (("baseline", BaselineDeriver), ("current", Deriver)):
                dt, removed, states[name] = rollback_once(db, cls, fork, folder)
                times[name].append(dt)
        assert states["baseline"] == states["current"], "the two lookups derived different rows"
        base, cur = statistics.median(times["baseline"]), statistics.median(times["current"])
        print(f"index: {a.traders} traders, head {head}, {run.stats.events:,} events; rollback above {fork} "
              f"({a.depth} blocks, {removed} events), median of {a.repeat}:")  # fmt: skip
        print(f"  baseline (ORDER BY block_number)     {base:8.3f} s")
        print(f"  current  (ORDER BY block_number + 0) {cur:8.3f} s   ratio {base / cur:,.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
