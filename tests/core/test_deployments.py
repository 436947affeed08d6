"""The deployments file: round trip, checksums, and one-line errors for missing or malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keeper.chain.deployments import Deployment, Market, default_path
from keeper.devchain.scenarios import SCENARIOS
from keeper.devchain.scenarios import get as get_scenario
from keeper.devchain.simulate import make_profiles, trader_address
from keeper.errors import KeeperError

A = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
B = "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512"


def _sample() -> Deployment:
    return Deployment(
        chain_id=31337,
        deployment_block=1,
        contracts={"Exchange": A, "OracleHub": B, "LiquidityVault": A, "InsuranceFund": B, "MockUSDC": A},
        markets=[Market(0, "BTC", A, B)],
    )


def test_round_trip_checksums(tmp_path: Path) -> None:
    path = _sample().save(tmp_path / "sub" / "local.json")
    data = json.loads(path.read_text())
    assert data["contracts"]["Exchange"] == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    loaded = Deployment.load(path)
    assert loaded.chain_id == 31337 and loaded.deployment_block == 1
    assert loaded.market("btc").primary == "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    assert loaded.collateral == loaded.contracts["MockUSDC"]


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(KeeperError, match="deployments file not found: .*nope.json"):
        Deployment.load(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "content, needle",
    [
        ("not json", "malformed deployments file"),
        ("[]", "top level is not an object"),
        ('{"chain_id": 1, "deployment_block": 0, "contracts": {"Exchange": "0x12"}}', "not an address"),
        ('{"chain_id": 1, "deployment_block": 0, "contracts": {}}', "lacks Exchange"),
        ('{"chain_id": "x", "deployment_block": 0, "contracts": {}}', "chain_id"),
    ],
)
def test_malformed_file(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(KeeperError) as info:
        Deployment.load(path)
    assert needle in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_default_path_is_repo_relative() -> None:
    assert default_path("config/deployments/local.json").is_absolute()


def test_traders_are_deterministic() -> None:
    assert trader_address(1, 0) == trader_address(1, 0) != trader_address(2, 0)
    a = make_profiles(7, 300, 3, [3, 5, 10, 20])
    assert a == make_profiles(7, 300, 3, [3, 5, 10, 20])
    tiers = {p.tier for p in a}
    assert tiers == {0, 1, 2, 3}
    assert all(1 <= p.leverage <= [3, 5, 10, 20][p.tier] for p in a)
    assert any(not p.educated for p in a) and sum(p.educated for p in a) > 0.9 * len(a)


def test_scenarios() -> None:
    import random

    assert set(SCENARIOS) == {"calm", "crash", "wick", "stale-oracle", "crash-day"}
    crash = get_scenario("crash")
    total = 1.0
    for b in range(10):
        total *= crash.multipliers(b, 3, random.Random(1))[0]
    assert total == pytest.approx(0.7)
    wick = get_scenario("wick")
    assert wick.multipliers(1, 1, random.Random(1)) == [0.85]
    stale = get_scenario("stale-oracle")
    assert stale.frozen(1, 2) and not stale.frozen(0, 2) and stale.extra_time(1) > 3600
    with pytest.raises(KeeperError, match="unknown scenario"):
        get_scenario("meteor")
