"""`keeper accounts` as a subprocess on a deployed, simulated and indexed anvil: its numbers equal
Exchange.accountSummary / liquidationPrice; after a crash `keeper liquidate --dry-run --json` lists
exactly the accounts Exchange.isLiquidatable says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from eth_abi import decode

from keeper.devchain.simulate import Rpc, make_profiles, simulate
from keeper.risk.live import SUMMARY_TYPES, calldata

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TRADERS, SEED = 150, 5


def _env(deployed: Any, tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KEEPER_CONFIG": str(REPO / "config" / "dev.toml"),
        "KEEPER_DATABASE__URL": f"sqlite:///{tmp / 'index.db'}",
        "KEEPER_CHAIN__RPC_URLS": orjson.dumps([deployed.anvil.url]).decode(),
        "KEEPER_CHAIN__DEPLOYMENTS_FILE": str(deployed.path),
    }


def keeper(env: dict[str, str], *args: str) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "keeper.cli", *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def _index(env: dict[str, str]) -> None:
    keeper(env, "db", "upgrade")
    keeper(env, "index", "--until-head", "--no-progress")


def test_accounts_match_the_chain_and_dry_run_matches_is_liquidatable(deployed: Any, tmp_path: Path) -> None:
    dep = deployed.deployment
    simulate(deployed.w3, dep, "calm", traders=TRADERS, seed=SEED, blocks=3)
    env = _env(deployed, tmp_path)
    _index(env)
    out = orjson.loads(keeper(env, "accounts", "--json"))
    rows = out["accounts"]
    assert rows, "no account listed"
    ratios = [r["value"] * 10_000 / r["maintenance_margin"] for r in rows]
    assert ratios == sorted(ratios)
    rpc = Rpc(deployed.anvil.url)
    ex = dep.address("Exchange")
    block = hex(out["mark_block"])
    # every listed account: AV, MM, ratio, tier, liquidation price per position equal the contract's views
    calls = []
    for r in rows:
        calls.append((ex, calldata("accountSummary(address)", ["address"], [r["account"]])))
        for p in r["positions"]:
            args = [r["account"], p["market_id"], 0]
            sig = "liquidationPrice(address,uint256,uint256)"
            calls.append((ex, calldata(sig, ["address", "uint256", "uint256"], args)))
    res = iter(rpc.eth_calls(calls, block))
    tiers = ("novice", "junior", "senior", "professional")
    for r in rows:
        s = decode(list(SUMMARY_TYPES), next(res))
        assert (r["value"], r["maintenance_margin"], r["ratio_bps"]) == (s[1], s[2], s[4]), r["account"]
        assert r["user_tier"] == tiers[s[5]] and r["liquidatable"] == s[7]
        for p in r["positions"]:
            assert int(p["liquidation_price"]) == decode(["uint256"], next(res))[0]
    at_risk = orjson.loads(keeper(env, "accounts", "--json", "--at-risk", "--limit", "5"))["accounts"]
    assert len(at_risk) <= 5
    assert all(r["warning_tier"] != "HEALTHY" for r in at_risk)
    risky = [r["account"] for r in rows if r["warning_tier"] != "HEALTHY"]
    assert [r["account"] for r in at_risk] == risky[:5]
    assert "ratio" in keeper(env, "accounts", "--limit", "3")

    # crash, re-index, dry run: exactly the liquidatable accounts
    simulate(deployed.w3, dep, "crash", traders=TRADERS, seed=SEED, blocks=10)
    _index(env)
    dry = orjson.loads(keeper(env, "liquidate", "--dry-run", "--json"))
    listed = {e["account"].lower() for batch in dry["batches"] for e in batch}
    traders = [p.address for p in make_profiles(SEED, TRADERS, len(dep.markets), [3, 5, 10, 20])]
    got = rpc.eth_calls([(ex, calldata("isLiquidatable(address)", ["address"], [a])) for a in traders],
                        hex(dry["mark_block"]))  # fmt: skip
    chain = {a.lower() for a, g in zip(traders, got, strict=True) if g and decode(["bool"], g)[0]}
    assert chain, "the crash made no account liquidatable"
    assert listed == chain
