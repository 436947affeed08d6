"""A keeper node for the leader-election tests: competes for the lock and, while the leader, appends
(node, epoch, time) to ``leader_log`` every 0.1 s through the fence.

    python leader_node.py <database url> <lock key> <node name>

Each guarded action takes the fence first, then "works" for 0.2 s (a SIGSTOP most likely lands
there), then writes through ``Fence.check`` in the write's transaction. Prints ``LEADER <epoch>``,
``WROTE <epoch>`` (first write of a term) and ``REFUSED <epoch> <reason>`` lines, flushed.
"""

from __future__ import annotations

import sys
import time

from sqlalchemy import text

from keeper.leader import LeaderElector, LostLeadership
from keeper.store.engine import make_engine


def main() -> int:
    url, key, node = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    engine = make_engine(url)
    elector = LeaderElector(
        engine, key, node_id=node, retry_interval=0.5, liveness_interval=1.0, session_timeout=4.0
    )
    elector.start()
    announced = 0
    wrote = 0
    while True:
        fence = elector.fence
        if fence is None:
            time.sleep(0.05)
            continue
        if fence.epoch != announced:
            print(f"LEADER {fence.epoch}", flush=True)
            announced = fence.epoch
        time.sleep(0.2)  # the work between deciding and writing
        try:
            with engine.begin() as conn:
                fence.check(conn)
                conn.execute(
                    text("INSERT INTO leader_log (node, epoch, at) VALUES (:n, :e, clock_timestamp())"),
                    {"n": node, "e": fence.epoch},
                )
        except LostLeadership as exc:
            print(f"REFUSED {fence.epoch} {exc}", flush=True)
            continue
        if wrote != fence.epoch:
            print(f"WROTE {fence.epoch}", flush=True)
            wrote = fence.epoch


if __name__ == "__main__":
    sys.exit(main())
