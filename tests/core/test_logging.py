"""The log pipeline never prints a loaded key, whichever way it reaches a log call."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from keeper.devchain.anvil import DEV_KEYS
from keeper.executor.keys import load_signer
from keeper.observability.logging import (
    configure_logging,
    drop_secret_fields,
    get_logger,
    log_context,
    register_secret,
)

# anvil's public dev account 4 — a well-known, worthless key.
DEV_KEY = DEV_KEYS[4]
BARE = DEV_KEY[2:]


@pytest.fixture
def loaded_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KEEPER_TEST_LOG_KEY", DEV_KEY)
    load_signer(key_env="KEEPER_TEST_LOG_KEY")  # registers the key with keys.redact
    return DEV_KEY


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, list[str]]]:
    stream = io.StringIO()
    yield stream, []
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_keeper_log_handler", False):
            root.removeHandler(h)
    structlog.contextvars.clear_contextvars()


def _emit_everything(key: str) -> None:
    log = get_logger("keeper.test")
    with log_context(block=123, account="0xabc", market="ETH-USD", tx="0xdead"):
        log.info(f"signing with {key}")
        log.info("upper", note=key.upper())
        log.info(
            "fields",
            note=key,
            private_key=key,
            password="hunter2-pass",
            api_secret="s3cr3t!",
            nested={"keystore_password": "hunter2-pass", "harmless": [key[2:]]},
        )
        log.info("positional %s", key)
        try:
            raise ValueError(f"bad key {key}")
        except ValueError:
            log.exception("signing failed")
        std = logging.getLogger("aiohttp.client")
        std.warning("posting with %s", key)
        std.warning("extras", extra={"private_key": key, "signer": key})
        try:
            raise RuntimeError(key[2:])
        except RuntimeError:
            std.exception("web3 said")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_key_never_printed(fmt: str, loaded_key: str, capture: tuple[io.StringIO, list[str]]) -> None:
    stream, _ = capture
    configure_logging(fmt, "DEBUG", stream=stream)
    _emit_everything(loaded_key)
    out = stream.getvalue()
    assert out.count("\n") >= 8
    for variant in (BARE, BARE.upper(), BARE[:40]):
        assert variant not in out
    assert "hunter2-pass" not in out and "s3cr3t!" not in out
    assert "private_key" not in out and "keystore_password" not in out
    assert "[redacted]" in out
    assert "Traceback" in out or '"exception"' in out  # exceptions are kept, only scrubbed
    if fmt == "json":
        lines = [json.loads(line) for line in out.splitlines()]
        assert all(line["block"] == 123 and line["market"] == "ETH-USD" for line in lines)
        assert {line["logger"] for line in lines} == {"keeper.test", "aiohttp.client"}
        assert any(line.get("signer", "").endswith("[redacted]") for line in lines)
        assert '"locals"' not in out  # truncated reprs of locals could leak a key prefix


def test_registered_secret_and_context_cleared(capture: tuple[io.StringIO, list[str]]) -> None:
    stream, _ = capture
    configure_logging("json", "INFO", stream=stream)
    url = "https://hooks.slack.com/services/T000/B000/XXXXSECRETTOKEN"
    register_secret(url)
    log = get_logger("keeper.test")
    with log_context(block=7):
        log.info("posting", target=url)
    log.info("after")
    log.debug("hidden at INFO")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    assert "XXXXSECRETTOKEN" not in stream.getvalue()
    assert lines[0]["block"] == 7 and "block" not in lines[1]


def test_drop_secret_fields_is_recursive() -> None:
    ed = {"event": "x", "privateKey": 1, "a": {"Secret": 2, "b": [{"seed_password": 3, "ok": 4}]}, "key": 5}
    assert drop_secret_fields(None, "info", ed) == {"event": "x", "a": {"b": [{"ok": 4}]}}
