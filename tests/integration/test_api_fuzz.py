"""Schemathesis fuzzing of the public JSON API from its own OpenAPI document, against a live server on a
dev chain: no 5xx, no stack trace or internal error text in any response. Bounded: 50 examples per
operation, no shrinking deadline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from publisher_support import ServerThread, Stack

from keeper.api.openapi import openapi_document
from keeper.devchain.anvil import ANVIL_BIN, DEV_KEYS, Anvil
from keeper.store.testdb import throwaway_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
schema = schemathesis.openapi.from_dict(openapi_document())
LEAKS = ("Traceback", 'File "', "sqlalchemy", "Exception", "keeper/", '.py"')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    if not ANVIL_BIN.exists() or not (REPO / "contracts" / "out" / "Exchange.sol" / "Exchange.json").exists():
        pytest.skip("anvil or the contracts are not built: run make setup build")
    from eth_account import Account

    from keeper.chain.connect import connect
    from keeper.devchain.deploy import deploy
    from keeper.devchain.simulate import simulate

    tmp = tmp_path_factory.mktemp("fuzz")
    with Anvil() as node, throwaway_database("sqlite", tmp) as url:
        w3 = connect(node.url, 31337)
        dep = deploy(
            w3, DEV_KEYS[0], Account.from_key(DEV_KEYS[1]).address, Account.from_key(DEV_KEYS[2]).address
        )

        class _Deployed:
            anvil, deployment = node, dep

        _Deployed.w3 = w3  # type: ignore[attr-defined]
        simulate(w3, dep, "calm", traders=6, seed=4, blocks=3)
        stack = Stack(_Deployed, url)
        try:
            stack.index()
            stack.publish()
            with ServerThread(
                stack, rate=10_000.0, burst=10_000, explain_rate=10_000.0, explain_burst=10_000
            ) as srv:
                yield srv
        finally:
            stack.close()


def no_leaks(ctx: Any, response: Any, case: Any) -> None:
    body = response.text if hasattr(response, "text") else response.content.decode(errors="replace")
    assert response.status_code < 500, f"{response.status_code}: {body[:200]}"
    for leak in LEAKS:
        assert leak not in body, f"response leaks {leak!r}: {body[:200]}"


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_fuzz(case: Any, server: ServerThread) -> None:
    case.call_and_validate(base_url=server.base, additional_checks=[no_leaks])
