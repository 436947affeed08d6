"""Crash-day test settings and report checks (the drill itself is keeper/devchain/crashday.py).

The test runs the same drill as ``keeper simulate --scenario crash-day``, with the issue's 2,000 traders
(about 2 minutes on 2 cores: setup ~10 s, keepers indexing ~15 s, crash and tail ~60 s, verification
with a fresh index ~30 s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keeper.devchain.crashday import CrashDayConfig

TEST_TRADERS = 2_000
TEST_SEED = 11


def crash_day_config(workdir: Path, report_path: Path) -> CrashDayConfig:
    return CrashDayConfig(traders=TEST_TRADERS, seed=TEST_SEED, workdir=workdir, report_path=report_path)


def check_report(r: dict[str, Any]) -> None:
    """What the issue asks of a crash day, on the report's figures (verify() already failed each of
    these into r["failures"]; the asserts here make the test's message name the property)."""
    assert r["failures"] == [], "\n".join(r["failures"])
    a, lat, bd, tx, pg = (
        r["accounts"],
        r["blocks_to_liquidation"],
        r["bad_debt"],
        r["transactions"],
        r["page"],
    )
    assert a["became_liquidatable"] > 0, "the crash made nobody liquidatable: the drill proves nothing"
    assert a["liquidated"] == a["became_liquidatable"] and a["still_liquidatable"] == 0
    assert lat["max_after_rpc_recovery"] is not None and lat["max_after_rpc_recovery"] <= lat["bound"]
    assert bd["paid_by_fund"] == bd["fund_payouts"]
    assert bd["debt"] == bd["paid_by_fund"] + bd["socialized"]
    assert tx["reverted"] == tx["lost_races"]
    assert a["by_keeper"].get("ours", 0) > 0, "the keeper under test liquidated nothing"
    assert r["rpc_faults"].get("429", 0) > 0 and r["rpc_faults"].get("killed") == 1
    assert pg["served_200"] > 0 and pg["figures_checked"] > 0
