"""Pure alert decisions: cool-down, crossings, delivery plans, payload formats, contacts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine

from keeper.alerts.contacts import Contact, InMemoryContacts, SqlContacts, validate_webhook_url
from keeper.alerts.dispatcher import (
    AlertDispatcher,
    AlertKind,
    Channel,
    CooldownGate,
    CrossingTracker,
    OperatorAlert,
    Severity,
    UserNotice,
    crossing,
    deep_reorg_alert,
    operator_message,
    plan_user_deliveries,
    user_message,
)
from keeper.alerts.sinks import Message, describe_url, webhook_payload
from keeper.config import load_settings
from keeper.errors import KeeperError
from keeper.observability.logging import redact_text
from keeper.risk.math import WarningTier as T


def test_cooldown_and_resolve() -> None:
    g = CooldownGate(60)
    assert g.should_send("index_lag", 0)
    assert not g.should_send("index_lag", 30)
    assert g.should_send("anomaly:x", 30)  # other keys are independent
    assert g.should_send("index_lag", 61)  # cool-down over
    assert not g.should_send("index_lag", 62)
    assert g.resolve("index_lag") and not g.resolve("index_lag")
    assert g.should_send("index_lag", 63)  # resolved: the next occurrence goes out at once
    assert not g.resolve("never-sent")
    assert g.active() == ["anomaly:x", "index_lag"]


def test_alert_key_and_message() -> None:
    a = OperatorAlert(AlertKind.UNTRUSTED_ORACLE, "ETH oracle stale for 120 s", subject="ETH-USD")
    assert a.key == "untrusted_oracle:ETH-USD"
    assert OperatorAlert(AlertKind.INDEX_LAG, "lag").key == "index_lag"
    assert "untrusted oracle (ETH-USD)" in operator_message(a).subject
    assert operator_message(a, resolved=True).subject.startswith("RESOLVED")


def test_once_per_crossing() -> None:
    t = CrossingTracker()
    seq = [
        T.HEALTHY,
        T.NOTICE,
        T.WARNING,
        T.WARNING,
        T.DANGER,
        T.LIQUIDATABLE,
        T.LIQUIDATABLE,
        T.DANGER,
        T.LIQUIDATABLE,
        T.HEALTHY,
        T.DANGER,
    ]
    got = [n.tier if (n := t.update("0xA", tier)) else None for tier in seq]
    assert got == [
        None,
        None,
        T.WARNING,
        None,
        T.DANGER,
        T.LIQUIDATABLE,
        None,
        None,
        T.LIQUIDATABLE,
        None,
        T.DANGER,
    ]


def test_jump_sends_one_notice_for_the_worst_line() -> None:
    t = CrossingTracker()
    n = t.update("0xB", T.LIQUIDATABLE)
    assert n is not None and n.tier == T.LIQUIDATABLE and n.channels == {Channel.PUSH, Channel.EMAIL}
    assert t.update("0xB", T.WARNING) is None  # recovered two lines: re-armed, nothing sent
    assert t.update("0xB", T.DANGER) is not None


def test_seed_suppresses_renotify_after_restart() -> None:
    t = CrossingTracker()
    t.seed("0xC", T.DANGER)
    assert t.update("0xc", T.DANGER) is None
    assert t.update("0xC", T.LIQUIDATABLE) is not None


@given(st.lists(st.sampled_from(list(T)), max_size=40))
def test_crossing_notifies_only_on_worsening(tiers: list[T]) -> None:
    level = T.HEALTHY
    for tier in tiers:
        new, line = crossing(level, tier)
        assert (line is not None) == (new > level)
        assert new <= tier
        level = new


def test_plans_follow_channels_and_contacts() -> None:
    both = Contact("0xa", webhook_url="https://h.example/x", email="u@example.com")
    warn = UserNotice("0xa", T.WARNING, frozenset({Channel.MESSAGE}))
    liq = UserNotice("0xa", T.LIQUIDATABLE, frozenset({Channel.PUSH, Channel.EMAIL}), ratio_bps=10_512)
    assert [p.channel for p in plan_user_deliveries(warn, both)] == ["webhook"]
    assert [p.channel for p in plan_user_deliveries(liq, both)] == ["webhook", "email"]
    assert [p.channel for p in plan_user_deliveries(liq, Contact("0xa", email="u@example.com"))] == ["email"]
    assert plan_user_deliveries(warn, Contact("0xa", email="u@example.com")) == []
    assert plan_user_deliveries(liq, None) == []
    assert user_message(warn).silent and not user_message(liq).silent
    assert "105.1%" in user_message(liq).text


def test_payload_formats() -> None:
    m = Message("subj", "body", silent=True)
    assert webhook_payload("slack", m) == {"text": "subj\nbody"}
    assert webhook_payload("discord", m) == {"content": "subj\nbody"}
    assert webhook_payload("telegram", m, "42") == {
        "chat_id": "42",
        "text": "subj\nbody",
        "disable_notification": True,
    }
    assert len(webhook_payload("discord", Message("", "x" * 5000))["content"]) == 2000
    with pytest.raises(ValueError):
        webhook_payload("telegram", m)
    assert describe_url("https://api.telegram.org/bot123:SECRET/sendMessage") == "https://api.telegram.org/…"


def test_webhook_url_validation() -> None:
    for bad in (
        "http://example.com/x",
        "https://127.0.0.1/x",
        "https://10.0.0.5/x",
        "https://localhost/x",
        "https://[::1]/x",
        "https://169.254.169.254/latest",
        "ftp://example.com",
        "nonsense",
    ):
        with pytest.raises(KeeperError):
            validate_webhook_url(bad)
    assert validate_webhook_url("https://hooks.slack.com/services/x")
    assert validate_webhook_url("http://127.0.0.1:9/x", allow_private=True)


@pytest.mark.parametrize("kind", ["memory", "sql"])
def test_contact_registries(kind: str) -> None:
    if kind == "memory":
        reg: InMemoryContacts | SqlContacts = InMemoryContacts()
    else:
        reg = SqlContacts(create_engine("sqlite://"), chain_id=31337)
        reg.create_table()
    reg.set(Contact("0xABCD", webhook_url="https://hooks.example.com/a", webhook_format="discord"))
    got = reg.get("0xabcd")
    assert got == Contact("0xabcd", "https://hooks.example.com/a", "discord")
    reg.set(Contact("0xAbCd", email="me@example.com"))
    assert reg.get("0xABCD") == Contact("0xabcd", email="me@example.com")
    with pytest.raises(KeeperError):
        reg.set(Contact("0x1", webhook_url="http://192.168.1.1/hook"))
    with pytest.raises(KeeperError):
        reg.set(Contact("0x1", email="not-an-email"))
    with pytest.raises(KeeperError):
        reg.set(
            Contact("0x1", webhook_url="https://api.telegram.org/botX/sendMessage", webhook_format="telegram")
        )
    reg.remove("0xABCD")
    assert reg.get("0xabcd") is None


def test_from_settings(tmp_path: Path) -> None:
    pw = tmp_path / "smtp-password"
    pw.write_text("smtp-pa55\n")
    settings = load_settings(
        alerts={
            "cooldown_seconds": 60,
            "webhooks": [
                {"name": "ops", "url": "https://hooks.slack.com/services/T/B/TOKEN123"},
                {"name": "tg", "url": "https://api.telegram.org/botX:Y/sendMessage", "format": "telegram",
                 "chat_id": "-1"},
            ],
            "email": {"host": "smtp.example.org", "sender": "k@example.org", "recipients": ["o@example.org"],
                      "username": "k", "password_file": str(pw)},
        }
    )  # fmt: skip
    d = AlertDispatcher.from_settings(settings.alerts, contacts=InMemoryContacts())
    assert [s.name for s in d.operator_sinks] == ["ops", "tg", "email"]
    assert d.gate.cooldown == 60 and d.email is not None and d.contacts is not None
    assert redact_text("see https://hooks.slack.com/services/T/B/TOKEN123 and smtp-pa55") == (
        "see [redacted] and [redacted]"
    )


def test_deep_reorg_alert_only_for_the_indexers_deep_reorg_stop() -> None:
    exc = KeeperError("reorg deeper than the window: none of the 4 stored blocks (10..13) is on the chain")
    alert = deep_reorg_alert(exc)
    assert alert is not None and alert.kind == AlertKind.DEEP_REORG and alert.severity == Severity.CRITICAL
    assert alert.key == "deep_reorg" and "none of the 4 stored blocks" in alert.text
    assert deep_reorg_alert(KeeperError("cannot reach RPC http://127.0.0.1:9: connection refused")) is None
    assert deep_reorg_alert(RuntimeError("the index loop stopped unexpectedly")) is None
