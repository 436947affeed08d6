"""Alert delivery against REAL receivers on loopback: an aiosmtpd SMTP server and an aiohttp webhook.

No mocks: the sinks open real sockets. The STARTTLS test uses a self-signed certificate generated at
test time (``cryptography`` when installed, else the ``openssl`` command); it is skipped, with the
plain-SMTP tests still running, only when neither is available.
"""

from __future__ import annotations

import asyncio
import email
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message as MimeMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from keeper.alerts.contacts import Contact, InMemoryContacts
from keeper.alerts.dispatcher import AlertDispatcher, AlertKind, OperatorAlert, Severity
from keeper.alerts.sinks import DeliveryResult, EmailSink, Message, RetryPolicy, WebhookSink
from keeper.devchain.anvil import free_port
from keeper.risk.math import WarningTier as T

FAST = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.05)
R = TypeVar("R")


# ----------------------------------------------------------------------------- SMTP receiver


@dataclass
class Mailbox:
    messages: list[tuple[list[str], MimeMessage, bool]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
        msg = email.message_from_bytes(envelope.content)
        self.messages.append((list(envelope.rcpt_tos), msg, session.ssl is not None))
        return "250 OK"


@pytest.fixture
def smtp_plain() -> Iterator[tuple[int, Mailbox]]:
    box, port = Mailbox(), free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    yield port, box
    ctl.stop()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    try:
        import datetime as dt
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.fail("neither cryptography nor openssl available to make a test certificate")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )  # fmt: skip
        return cert, key
    pk = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    crt = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pk.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(pk, hashes.SHA256())
    )  # fmt: skip
    cert.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))  # fmt: skip
    return cert, key


def _auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"keeper" and data.password == b"pa55-word"
    return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself


@pytest.fixture
def smtp_tls(tmp_path: Path) -> Iterator[tuple[int, Mailbox, Path]]:
    cert, key = _self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    box, port = Mailbox(), free_port()
    ctl = Controller(box, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True,
                     authenticator=_auth, auth_required=True, auth_require_tls=True)  # fmt: skip
    ctl.start()
    yield port, box, cert
    ctl.stop()


# ----------------------------------------------------------------------------- webhook receiver


@dataclass
class Hooks:
    bodies: dict[str, list[Any]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)


async def _with_receiver(fn: Callable[[str, Hooks], Awaitable[R]]) -> R:
    hooks = Hooks()

    async def handle(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        hooks.hits[name] = hooks.hits.get(name, 0) + 1
        if name == "down" or (name == "flaky" and hooks.hits[name] <= 2):
            return web.Response(status=500, text="boom")
        if name == "gone":
            return web.Response(status=404)
        hooks.bodies.setdefault(name, []).append(await request.json())
        return web.Response(status=204 if name == "discord" else 200, text="" if name == "discord" else "ok")

    app = web.Application()
    app.router.add_post("/hook/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        return await fn(f"http://127.0.0.1:{runner.addresses[0][1]}/hook", hooks)
    finally:
        await runner.cleanup()


def run(fn: Callable[[str, Hooks], Awaitable[R]]) -> R:
    return asyncio.run(_with_receiver(fn))


# ----------------------------------------------------------------------------- webhooks


def test_webhook_formats() -> None:
    async def go(base: str, hooks: Hooks) -> list[DeliveryResult]:
        msg = Message("subject", "body")
        return [
            await WebhookSink(f"{base}/slack", "slack", retry=FAST).deliver(msg),
            await WebhookSink(f"{base}/discord", "discord", retry=FAST).deliver(msg),
            await WebhookSink(f"{base}/telegram", "telegram", chat_id="-100", retry=FAST).deliver(msg),
        ]

    hooks_seen: dict[str, list[Any]] = {}

    async def wrapped(base: str, hooks: Hooks) -> list[DeliveryResult]:
        res = await go(base, hooks)
        hooks_seen.update(hooks.bodies)
        return res

    results = run(wrapped)
    assert all(r.ok and r.attempts == 1 for r in results), results
    assert [r.status for r in results] == [200, 204, 200]
    assert hooks_seen == {
        "slack": [{"text": "subject\nbody"}],
        "discord": [{"content": "subject\nbody"}],
        "telegram": [{"chat_id": "-100", "text": "subject\nbody"}],
    }
    assert all(r.target.startswith("http://127.0.0.1:") and "/hook" not in r.target for r in results)


def test_webhook_retries_until_accepted() -> None:
    async def go(base: str, hooks: Hooks) -> tuple[DeliveryResult, Hooks]:
        return await WebhookSink(f"{base}/flaky", retry=FAST).deliver(Message("s", "t")), hooks

    result, hooks = run(go)
    assert result.ok and result.attempts == 3 and result.status == 200
    assert hooks.hits["flaky"] == 3 and hooks.bodies["flaky"] == [{"text": "s\nt"}]


def test_webhook_failures_recorded_not_raised() -> None:
    async def go(base: str, hooks: Hooks) -> tuple[list[DeliveryResult], Hooks]:
        down = WebhookSink(f"{base}/down", retry=FAST, name="ops")
        gone = WebhookSink(f"{base}/gone", retry=FAST)
        nobody = WebhookSink(f"http://127.0.0.1:{free_port()}/x", retry=FAST)
        return [await down.deliver(Message("s", "t")), await gone.deliver(Message("s", "t")),
                await nobody.deliver(Message("s", "t"))], hooks  # fmt: skip

    (down, gone, nobody), hooks = run(go)
    assert not down.ok and down.attempts == 3 and down.status == 500 and down.error == "HTTP 500"
    assert hooks.hits["down"] == 3
    assert not gone.ok and gone.attempts == 1 and gone.status == 404  # 4xx is permanent: no retry
    assert not nobody.ok and nobody.attempts == 3 and nobody.error and "Connect" in nobody.error


# ----------------------------------------------------------------------------- email


def test_email_plain_smtp(smtp_plain: tuple[int, Mailbox]) -> None:
    port, box = smtp_plain
    sink = EmailSink("127.0.0.1", port, "keeper@example.org", ["ops@example.org"], tls="none",
                     subject_prefix="[keeper]", retry=FAST)  # fmt: skip
    res = asyncio.run(sink.deliver(Message("index lag", "indexer is 40 blocks behind")))
    assert res.ok and res.attempts == 1 and res.target == "ops@example.org"
    [(rcpt, msg, tls)] = box.messages
    assert rcpt == ["ops@example.org"] and not tls
    assert msg["Subject"] == "[keeper] index lag" and msg["From"] == "keeper@example.org"
    assert "40 blocks behind" in msg.get_payload()


def test_email_starttls_with_login(smtp_tls: tuple[int, Mailbox, Path]) -> None:
    port, box, cert = smtp_tls
    sink = EmailSink("127.0.0.1", port, "keeper@example.org", ["ops@example.org"], tls="starttls",
                     ca_file=cert, username="keeper", password="pa55-word", retry=FAST)  # fmt: skip
    res = asyncio.run(sink.deliver(Message("fund shortfall", "coverage 0.4"), to=["user@example.com"]))
    assert res.ok, res
    [(rcpt, msg, tls)] = box.messages
    assert rcpt == ["user@example.com"] and tls and msg["Subject"] == "fund shortfall"

    untrusted = EmailSink("127.0.0.1", port, "k@example.org", ["o@example.org"], tls="starttls",
                          username="keeper", password="pa55-word", retry=FAST)  # fmt: skip
    bad = asyncio.run(untrusted.deliver(Message("s", "t")))
    assert not bad.ok and bad.attempts == 1 and "CERTIFICATE_VERIFY_FAILED" in (bad.error or "")
    wrong = EmailSink("127.0.0.1", port, "k@example.org", ["o@example.org"], ca_file=cert,
                      username="keeper", password="nope-nope", retry=FAST)  # fmt: skip
    denied = asyncio.run(wrong.deliver(Message("s", "t")))
    assert not denied.ok and denied.status == 535 and "nope-nope" not in (denied.error or "")
    assert len(box.messages) == 1


def test_starttls_required_but_not_offered_fails_without_downgrade(smtp_plain: tuple[int, Mailbox]) -> None:
    port, box = smtp_plain
    sink = EmailSink("127.0.0.1", port, "k@example.org", ["o@example.org"], tls="starttls", retry=FAST)
    res = asyncio.run(sink.deliver(Message("s", "t")))
    assert not res.ok and res.attempts == 1 and "STARTTLS" in (res.error or "")
    assert box.messages == []


def test_smtp_server_down_is_recorded() -> None:
    sink = EmailSink("127.0.0.1", free_port(), "k@example.org", ["o@example.org"], tls="none", retry=FAST)
    res = asyncio.run(sink.deliver(Message("s", "t")))
    assert not res.ok and res.attempts == 3 and "ConnectionRefused" in (res.error or "")


# ----------------------------------------------------------------------------- dispatcher end to end


def test_user_warnings_once_per_crossing(smtp_plain: tuple[int, Mailbox]) -> None:
    port, box = smtp_plain
    recorded: list[DeliveryResult] = []

    async def go(base: str, hooks: Hooks) -> Hooks:
        contacts = InMemoryContacts(allow_private=True)
        contacts.set(Contact("0xAAAA", webhook_url=f"{base}/user-a", webhook_format="telegram", chat_id="7",
                             email="alice@example.com"))  # fmt: skip
        contacts.set(Contact("0xBBBB", webhook_url=f"{base}/down"))  # a user whose webhook is broken
        mail = EmailSink("127.0.0.1", port, "keeper@example.org", tls="none", retry=FAST)
        d = AlertDispatcher(contacts=contacts, email=mail, retry=FAST, on_result=recorded.append)
        try:
            for tier in (T.HEALTHY, T.NOTICE, T.WARNING, T.WARNING, T.DANGER, T.DANGER, T.LIQUIDATABLE,
                         T.LIQUIDATABLE, T.DANGER, T.LIQUIDATABLE, T.LIQUIDATABLE):  # fmt: skip
                await d.tier_changed("0xAAAA", tier, ratio_bps=10_400 if tier == T.LIQUIDATABLE else None)
            await d.tier_changed("0xBBBB", T.DANGER)
            await d.tier_changed("0xCCCC", T.LIQUIDATABLE)  # no contact registered: nothing to send
        finally:
            await d.close()
        return hooks

    hooks = run(go)
    bodies = hooks.bodies["user-a"]
    assert [b["text"].split("\n")[0] for b in bodies] == [
        "Zanbara: margin warning",
        "Zanbara: DANGER: close to liquidation",
        "Zanbara: LIQUIDATABLE: your account can be liquidated now",
        "Zanbara: LIQUIDATABLE: your account can be liquidated now",
    ]
    assert bodies[0]["disable_notification"] is True and "disable_notification" not in bodies[1]
    assert all(b["chat_id"] == "7" for b in bodies) and "104.0%" in bodies[2]["text"]
    assert [(rcpt, m["Subject"]) for rcpt, m, _ in box.messages] == [
        (["alice@example.com"], "Zanbara: LIQUIDATABLE: your account can be liquidated now")
    ] * 2
    ok = [r for r in recorded if r.ok]
    failed = [r for r in recorded if not r.ok]
    assert len(ok) == 6 and all(r.key == "0xaaaa" for r in ok)
    assert [(r.key, r.attempts, r.error) for r in failed] == [("0xbbbb", 3, "HTTP 500")]


def test_operator_alerts_cooldown_and_resolution(smtp_plain: tuple[int, Mailbox]) -> None:
    port, box = smtp_plain
    now = [1000.0]
    recorded: list[DeliveryResult] = []

    async def go(base: str, hooks: Hooks) -> Hooks:
        sinks = [
            WebhookSink(f"{base}/ops", "slack", name="ops-slack", retry=FAST),
            WebhookSink(f"{base}/down", "discord", name="ops-discord", retry=FAST),
            EmailSink("127.0.0.1", port, "keeper@example.org", ["ops@example.org"], tls="none", retry=FAST),
        ]
        d = AlertDispatcher(sinks, cooldown=300, retry=FAST, on_result=recorded.append, clock=lambda: now[0])
        oracle = OperatorAlert(AlertKind.UNTRUSTED_ORACLE, "ETH-USD stale 95 s", "ETH-USD", Severity.CRITICAL)
        assert len(await d.alert(oracle)) == 3
        assert await d.alert(oracle) == []  # cooling down
        assert len(await d.alert(OperatorAlert(AlertKind.UNTRUSTED_ORACLE, "BTC stale", "BTC-USD"))) == 3
        now[0] += 100
        assert await d.alert(oracle) == []
        assert len(await d.resolve(AlertKind.UNTRUSTED_ORACLE, "ETH-USD")) == 3
        assert await d.resolve(AlertKind.UNTRUSTED_ORACLE, "ETH-USD") == []
        assert len(await d.alert(oracle)) == 3  # resolved, so it goes out again at once
        now[0] += 301
        assert len(await d.alert(oracle)) == 3  # cool-down elapsed
        return hooks

    hooks = run(go)
    texts = [b["text"].split("\n")[0] for b in hooks.bodies["ops"]]
    assert texts == [
        "[CRITICAL] untrusted oracle (ETH-USD)",
        "[WARNING] untrusted oracle (BTC-USD)",
        "RESOLVED untrusted oracle (ETH-USD)",
        "[CRITICAL] untrusted oracle (ETH-USD)",
        "[CRITICAL] untrusted oracle (ETH-USD)",
    ]
    assert [m["Subject"] for _, m, _ in box.messages] == texts
    assert len(recorded) == 15
    assert {r.sink for r in recorded if not r.ok} == {"ops-discord"}
    assert all(r.key in ("untrusted_oracle:ETH-USD", "untrusted_oracle:BTC-USD") for r in recorded)
