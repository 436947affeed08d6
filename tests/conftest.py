"""Shared fixtures: a fresh anvil chain per test, and one with the full Zanbara deployment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from keeper.devchain.anvil import ANVIL_BIN, DEV_KEYS, Anvil

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTRACTS_OUT = REPO_ROOT / "contracts" / "out"


def _missing_toolchain() -> str | None:
    if not ANVIL_BIN.exists():
        return f"anvil not installed ({ANVIL_BIN}): run make setup"
    if not (CONTRACTS_OUT / "Exchange.sol" / "Exchange.json").exists():
        return "contracts not built: run make build"
    return None


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    """A fresh anvil (chain id 31337) on a free port, stopped after the test."""
    if not ANVIL_BIN.exists():
        pytest.fail(f"anvil not installed ({ANVIL_BIN}): run make setup")
    with Anvil() as node:
        yield node


@dataclass
class Deployed:
    anvil: Anvil
    w3: object  # web3.Web3
    deployment: object  # keeper.chain.deployments.Deployment
    path: Path  # the deployments file written for it
    risk_admin: str
    guardian: str


@pytest.fixture
def deployed(anvil: Anvil, tmp_path: Path) -> Deployed:
    """``anvil`` plus the full deployment (markets listed, vault and fund seeded), file in tmp_path."""
    reason = _missing_toolchain()
    if reason:
        pytest.fail(reason)
    from eth_account import Account

    from keeper.chain.connect import connect
    from keeper.devchain.deploy import deploy

    w3 = connect(anvil.url, 31337)
    risk_admin = Account.from_key(DEV_KEYS[1]).address
    guardian = Account.from_key(DEV_KEYS[2]).address
    deployment = deploy(w3, DEV_KEYS[0], risk_admin, guardian)
    path = deployment.save(tmp_path / "deployments.json")
    return Deployed(anvil, w3, deployment, path, risk_admin, guardian)


@pytest.fixture(params=["sqlite", "postgres"])
def db_kind(request: pytest.FixtureRequest) -> str:
    """Every database test runs on SQLite and on PostgreSQL."""
    return str(request.param)


@pytest.fixture
def new_db(db_kind: str, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Factory of throwaway databases of this test's kind (PostgreSQL: keeper_t_<random>, dropped
    after). No server is a failure, never a skip."""
    from keeper.store.testdb import DatabaseUnavailable, throwaway_database

    with ExitStack() as stack:

        def make() -> str:
            try:
                return stack.enter_context(throwaway_database(db_kind, tmp_path))
            except DatabaseUnavailable as exc:
                pytest.fail(str(exc))

        yield make
