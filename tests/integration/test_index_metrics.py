"""``keeper index`` (following the chain) serves the indexer's Prometheus metrics on ``metrics.*``, on a real
anvil and a real SQLite and PostgreSQL database: the events counter equals the ``events`` rows, the lag is
0 at the head, the head's age is the head's; a metrics port already taken is one error line at start."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alert_receivers import wait_for
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from keeper.devchain.anvil import free_port
from keeper.indexer.testing import Driver
from keeper.store.engine import make_engine

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, float]:
    """The unlabelled samples of /metrics (empty when nothing answers yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
    except OSError:
        return {}
    return {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples if not s.labels}


def db_state(url: str) -> tuple[int | None, int]:
    """(checkpoint block, rows in events), None before the index exists."""
    engine = make_engine(url, busy_timeout_ms=10_000)
    try:
        with engine.connect() as conn:
            cp = conn.execute(text("select block_number from checkpoints")).scalar()
            n = conn.execute(text("select count(*) from events")).scalar()
        return (int(cp) if cp is not None else None), int(n or 0)
    except Exception:  # noqa: BLE001 - tables not created yet
        return None, 0
    finally:
        engine.dispose()


def latest(d: Driver) -> tuple[int, int]:
    b = d.w3.eth.get_block("latest")
    return int(b["number"]), int(b["timestamp"])


def test_keeper_index_serves_the_indexer_metrics(
    deployed: Any, new_db: Callable[[], str], tmp_path: Path, db_kind: str
) -> None:
    t_start = time.monotonic()
    d = Driver(deployed.w3, deployed.deployment)
    d.fund_traders()
    for i in range(4):
        d.send(d.trade_tx(d.traders[i % 3], i % 2, (i + 1) * 10**15))
    url = new_db()
    port = free_port()
    env = {
        **os.environ,
        "KEEPER_CHAIN__RPC_URLS": f'["{deployed.anvil.url}"]',
        "KEEPER_CHAIN__DEPLOYMENTS_FILE": str(deployed.path),
        "KEEPER_DATABASE__URL": url,
        "KEEPER_INDEXER__POLL_INTERVAL": "0.2",
        "KEEPER_METRICS__ENABLED": "true",
        "KEEPER_METRICS__PORT": str(port),
    }
    cmd = [sys.executable, "-m", "keeper.cli", "index", "--no-progress"]
    out = tmp_path / f"index-{db_kind}.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:

        def alive() -> None:
            assert proc.poll() is None, out.read_text()[-3000:]

        def caught_up(head: int) -> Callable[[], bool]:
            def check() -> bool:
                cp, rows = db_state(url)
                m = scrape(port)
                return cp == head and rows > 0 and m.get("keeper_events_indexed_total") == rows

            return check

        # 1. at the head: the counter is the events table, the lag 0, the head's age the head's
        head, head_ts = latest(d)
        wait_for("the index and its metrics at the head", caught_up(head), 45, alive)
        cp, rows = db_state(url)
        m = scrape(port)
        assert m["keeper_events_indexed_total"] == rows
        assert m["keeper_index_lag_blocks"] == 0 and cp == head
        age = m["keeper_head_age_seconds"]
        assert math.isfinite(age) and 0 <= age < 60, age
        assert abs(age - (time.time() - head_ts)) < 5, (age, head_ts)
        assert "keeper_events_indexed_per_second" in m

        # 2. new DEX transactions and a few more blocks: the counter follows the table
        for i in range(3):
            d.send(d.trade_tx(d.traders[3 + i], i % 2, 10**15))
        d.mine(2)
        head2, head2_ts = latest(d)
        assert head2 >= head + 5
        wait_for("the new events in the metrics", caught_up(head2), 30, alive)
        _, rows2 = db_state(url)
        m = scrape(port)
        assert rows2 > rows and m["keeper_events_indexed_total"] == rows2
        assert m["keeper_index_lag_blocks"] == 0
        assert abs(m["keeper_head_age_seconds"] - (time.time() - head2_ts)) < 5

        # SIGTERM: a clean stop
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in out.read_text()

    # 3. the metrics port already taken: one error line, non-zero, no traceback, at once
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        t0 = time.monotonic()
        res = subprocess.run(cmd, env={**env, "KEEPER_METRICS__PORT": str(busy)}, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    output = res.stdout + res.stderr
    assert res.returncode != 0, output[-3000:]
    assert time.monotonic() - t0 < 30
    assert "Traceback" not in output
    errors = [ln for ln in output.splitlines() if "cannot listen on" in ln]
    assert errors == [f"error: cannot listen on 127.0.0.1:{busy}: Address already in use"], output[-3000:]
    assert time.monotonic() - t_start < 90
