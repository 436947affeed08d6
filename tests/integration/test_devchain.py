"""Dev chain end to end: deploy, simulate calm then crash, read the book back through the contracts'
views; reproducibility of a seed; and the CLI's one-line errors for bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from keeper.chain.connect import connect, contract
from keeper.devchain.anvil import DEV_KEYS, Anvil
from keeper.devchain.deploy import deploy
from keeper.devchain.simulate import make_profiles, simulate

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
KEEPER = REPO_ROOT / ".venv" / "bin" / "keeper"
USDC = 10**6


def _views(w3: Any, dep: Any) -> dict[str, Any]:
    c = dep.contracts
    return {
        "ex": contract(w3, "Exchange", c["Exchange"]),
        "oracle": contract(w3, "OracleHub", c["OracleHub"]),
        "vault": contract(w3, "LiquidityVault", c["LiquidityVault"]),
        "fund": contract(w3, "InsuranceFund", c["InsuranceFund"]),
        "usdc": contract(w3, "MockUSDC", c["MockUSDC"]),
    }


def _book(w3: Any, dep: Any, traders: int, seed: int) -> dict[str, Any]:
    """The state a seed should fix: every trader's positions, collateral, trades; feed answers, marks."""
    v = _views(w3, dep)
    ex = v["ex"]
    out: dict[str, Any] = {"accounts": {}, "feeds": [], "marks": []}
    for p in make_profiles(seed, traders, len(dep.markets), [3, 5, 10, 20]):
        a = p.address
        out["accounts"][a] = (
            [tuple(ex.functions.positionOf(a, m.id).call()) for m in dep.markets],
            ex.functions.collateralOf(a).call(),
            ex.functions.tradeCount(a).call(),
            ex.functions.tierOf(a).call(),
        )
    for m in dep.markets:
        agg = w3.eth.contract(address=m.primary, abi=[{
            "name": "latestRoundData", "type": "function", "stateMutability": "view", "inputs": [],
            "outputs": [{"type": "uint80"}, {"type": "int256"}, {"type": "uint256"}, {"type": "uint256"},
                        {"type": "uint80"}]}])  # fmt: skip
        out["feeds"].append(agg.functions.latestRoundData().call()[1])
        out["marks"].append(tuple(v["oracle"].functions.tryMarkPrice(m.id).call()))
    out["vault"] = v["vault"].functions.totalAssets().call()
    out["fund"] = v["fund"].functions.balance().call()
    return out


def test_deploy_simulate_calm_then_crash(deployed: Any) -> None:
    w3, dep = deployed.w3, deployed.deployment
    v = _views(w3, dep)
    ex, fund, usdc = v["ex"], v["fund"], v["usdc"]
    assert ex.functions.marketCount().call() == 3
    assert [ex.functions.market(i).call()[0] for i in range(3)] == ["BTC", "ETH", "SOL"]
    assert v["vault"].functions.totalAssets().call() == 20_000_000 * USDC
    assert fund.functions.balance().call() == 500_000 * USDC
    assert v["oracle"].functions.markPrice(0).call() == 60_000 * 10**18

    traders = 40
    calm = simulate(w3, dep, "calm", traders=traders, seed=3)
    assert calm.new_traders == traders and calm.blocks == 20
    addrs = [p.address for p in make_profiles(3, traders, 3, [3, 5, 10, 20])]

    tiers_with_positions: set[int] = set()
    markets_with_positions: set[int] = set()
    longs = shorts = 0
    collateral_held = 0
    for a in addrs:
        sizes = [ex.functions.positionOf(a, m).call()[0] for m in range(3)]
        collateral_held += max(ex.functions.collateralOf(a).call(), 0)
        if any(sizes):
            tiers_with_positions.add(ex.functions.tierOf(a).call())
            markets_with_positions |= {m for m in range(3) if sizes[m]}
            longs += sum(s > 0 for s in sizes)
            shorts += sum(s < 0 for s in sizes)
    assert tiers_with_positions == {0, 1, 2, 3}, "novice, junior, senior and professional all trade"
    assert markets_with_positions == {0, 1, 2}
    assert longs > 0 and shorts > 0
    # the exchange holds exactly the traders' positive collateral (everyone else is flat)
    assert usdc.functions.balanceOf(ex.address).call() == collateral_held
    # the fund's balance is its seed plus its booked income, minus payouts
    f = fund.functions
    expected_fund = (
        f.totalDonations().call()
        + f.totalFeeIncome().call()
        + f.totalPenaltyIncome().call()
        - f.totalPayouts().call()
    )
    assert f.balance().call() == expected_fund
    assert f.totalDonations().call() == 500_000 * USDC and f.totalFeeIncome().call() > 0
    assert not any(ex.functions.isLiquidatable(a).call() for a in addrs)

    crash = simulate(w3, dep, "crash", traders=traders, seed=3)
    assert crash.new_traders == 0
    liquidatable = [a for a in addrs if ex.functions.isLiquidatable(a).call()]
    assert liquidatable, "a 30% crash leaves leveraged longs liquidatable"
    assert crash.liquidatable == len(liquidatable)
    for m in range(3):
        assert v["oracle"].functions.status(m).call() == 1  # ReduceOnly: the breaker tripped
    assert usdc.functions.balanceOf(ex.address).call() == sum(
        max(ex.functions.collateralOf(a).call(), 0) for a in addrs
    )


def test_same_seed_same_state() -> None:
    books = []
    for _ in range(2):
        with Anvil() as node:
            w3 = connect(node.url, 31337)
            dep = deploy(w3, DEV_KEYS[0], Account.from_key(DEV_KEYS[1]).address)
            simulate(w3, dep, "calm", traders=20, seed=11, blocks=6)
            simulate(w3, dep, "wick", traders=20, seed=11)
            books.append(_book(w3, dep, 20, 11))
    assert books[0] == books[1]
    assert any(any(s[0] for s in acct[0]) for acct in books[0]["accounts"].values())


def test_stale_oracle_pauses_one_market(deployed: Any) -> None:
    w3, dep = deployed.w3, deployed.deployment
    r = simulate(w3, dep, "stale-oracle", traders=12, seed=5)
    assert r.statuses == {"BTC": "Active", "ETH": "Active", "SOL": "Paused"}
    assert r.marks["SOL"] is None
    # the chain's mining settings are restored: automine is back on
    assert w3.provider.make_request("anvil_getAutomine", [])["result"] is True


# ------------------------------------------------------------------------------------------- CLI


def _keeper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = [str(KEEPER)] if KEEPER.exists() else [sys.executable, "-m", "keeper.cli"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
    full_env.update(env or {})
    return subprocess.run(
        [*exe, *args], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=full_env, check=False
    )


def _assert_one_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0], lines[0]


def test_cli_deploy_and_bad_inputs(anvil: Anvil, tmp_path: Path) -> None:
    out = tmp_path / "local.json"
    ok = _keeper("deploy", "--rpc-url", anvil.url, "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(out.read_text())["chain_id"] == 31337

    _assert_one_error(
        _keeper("deploy", "--rpc-url", "http://127.0.0.1:9", "--out", str(tmp_path / "x.json")),
        "cannot reach RPC http://127.0.0.1:9: connection refused",
    )
    _assert_one_error(
        _keeper("deploy", "--rpc-url", anvil.url, "--chain-id", "1", "--out", str(tmp_path / "x.json")),
        f"RPC {anvil.url} serves chain 31337, expected 1",
    )
    broke = Account.create().key.hex()
    _assert_one_error(
        _keeper(
            "deploy",
            "--rpc-url",
            anvil.url,
            "--out",
            str(tmp_path / "x.json"),
            env={"KEEPER_DEV__DEPLOYER_KEY": broke},
        ),  # fmt: skip
        "has 0 ETH, needs at least",
    )
    assert (
        broke.removeprefix("0x")
        not in _keeper(
            "deploy",
            "--rpc-url",
            anvil.url,
            "--out",
            str(tmp_path / "x.json"),
            env={"KEEPER_DEV__DEPLOYER_KEY": broke},
        ).stderr
    )
    assert not (tmp_path / "x.json").exists()

    _assert_one_error(
        _keeper("simulate", "--deployments", str(tmp_path / "missing.json"), "--rpc-url", anvil.url),
        "deployments file not found",
    )
    _assert_one_error(
        _keeper("simulate", "--deployments", str(out), "--rpc-url", "http://127.0.0.1:9"),
        "cannot reach RPC http://127.0.0.1:9",
    )
    wrong_chain = tmp_path / "chain1.json"
    wrong_chain.write_text(out.read_text().replace('"chain_id": 31337', '"chain_id": 1'))
    _assert_one_error(
        _keeper("simulate", "--deployments", str(wrong_chain), "--rpc-url", anvil.url),
        "serves chain 31337, expected 1",
    )
    with Anvil() as empty:  # same chain id, nothing deployed
        _assert_one_error(
            _keeper("simulate", "--deployments", str(out), "--rpc-url", empty.url),
            "no contract code for Exchange at 0x",
        )
    # the happy path of the CLI, small
    sim = _keeper(
        "simulate", "--deployments", str(out), "--rpc-url", anvil.url, "--traders", "8", "--blocks", "2"
    )
    assert sim.returncode == 0, sim.stderr
    assert "summary (calm, seed 1): 8 traders" in sim.stdout
