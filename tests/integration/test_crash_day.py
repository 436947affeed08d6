"""Crash day (`keeper simulate --scenario crash-day`): on anvil, seeded traders across tiers and markets;
−30% over 10 blocks with the base fee ×20; a 3-block reorg mid-crash; the primary RPC answering 429 to
half the calls, then down for 30 s; a competing keeper; the page under load from another process. The
keeper under test (`keeper run` as a subprocess, RPC URLs: the fault proxy first, anvil second) is
SIGKILLed once mid-crash and restarted. Checked afterwards (keeper/devchain/crashday.py: verify):
every account that became liquidatable was liquidated, within (liquidation gas / block gas limit) + 2
blocks of RPC recovery; Σ BadDebtSettled.paidByFund == Σ FundPayout.paid, the rest socialized; no account
state liquidated twice; the database equals a fresh index of the final chain; the page's figures equal
InsuranceFund.balance at the block they are stamped with; nothing of ours reverted except lost races;
no nonce reused; no key in logs, databases or page. The report is printed and saved as JSON
(var/artifacts/crash-day.json)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from keeper.devchain.anvil import REPO_ROOT
from keeper.devchain.crashday import format_report, run_crash_day

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash_day_support import check_report, crash_day_config  # noqa: E402

pytestmark = pytest.mark.integration


def test_crash_day(tmp_path: Path) -> None:
    t0 = time.monotonic()
    report = run_crash_day(
        crash_day_config(tmp_path / "crash-day", REPO_ROOT / "var" / "artifacts" / "crash-day.json"),
        log=print,
    )
    print(format_report(report))
    print(f"crash-day test: {time.monotonic() - t0:.1f} s")
    check_report(report)
