"""Delivery sinks: webhooks (Slack, Discord, Telegram formats) and email over SMTP.

A sink delivers one :class:`Message` and returns a :class:`DeliveryResult` — it never raises for a
delivery failure. Transient failures (connection errors, timeouts, HTTP 429/5xx, SMTP 4xx) are retried
with exponential backoff and jitter (tenacity); permanent ones (HTTP 4xx, SMTP 5xx, TLS verification)
are not. Webhook URLs often embed a token, so results and logs show only the URL's scheme and host.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

from keeper.observability.logging import get_logger, redact_text, register_secret

__all__ = [
    "DeliveryResult",
    "EmailSink",
    "Message",
    "RetryPolicy",
    "Sink",
    "WebhookFormat",
    "WebhookSink",
    "describe_url",
    "webhook_payload",
]

log = get_logger(__name__)

WebhookFormat = Literal["slack", "discord", "telegram"]
#: Longest text each service accepts in one message.
_MAX_TEXT = {"slack": 39_000, "discord": 2_000, "telegram": 4_096}


@dataclass(frozen=True)
class Message:
    """What to say. ``silent``: deliver without a push notification where the service supports it."""

    subject: str
    text: str
    silent: bool = False


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one delivery (after its retries); the caller stores it."""

    sink: str
    channel: Literal["webhook", "email"]
    target: str  # redacted: scheme://host for webhooks, the addresses for email
    ok: bool
    attempts: int
    error: str | None = None
    status: int | None = None  # last HTTP status / SMTP code, when there was one
    key: str | None = None  # the alert's de-dup key or the account, filled in by the dispatcher
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial_backoff: float = 0.5
    max_backoff: float = 30.0

    def retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.initial_backoff, max=self.max_backoff)
            + wait_random(0, self.initial_backoff / 2),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )


class Sink(Protocol):
    name: str

    async def deliver(self, message: Message) -> DeliveryResult: ...


class _Transient(Exception):
    def __init__(self, error: str, status: int | None = None) -> None:
        super().__init__(error)
        self.status = status


class _Permanent(Exception):
    def __init__(self, error: str, status: int | None = None) -> None:
        super().__init__(error)
        self.status = status


def describe_url(url: str) -> str:
    """``scheme://host[:port]`` — never the path or query, where webhook tokens live."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme}://{host}{port}/…"


def webhook_payload(fmt: WebhookFormat, message: Message, chat_id: str | None = None) -> dict[str, Any]:
    """The JSON body for ``fmt`` (pure)."""
    body = f"{message.subject}\n{message.text}" if message.subject else message.text
    limit = _MAX_TEXT[fmt]
    if len(body) > limit:
        body = body[: limit - 1] + "…"
    if fmt == "slack":
        return {"text": body}
    if fmt == "discord":
        return {"content": body}
    if fmt == "telegram":
        if not chat_id:
            raise ValueError("a telegram webhook needs a chat_id")
        payload: dict[str, Any] = {"chat_id": chat_id, "text": body}
        if message.silent:
            payload["disable_notification"] = True
        return payload
    raise ValueError(f"unknown webhook format {fmt!r}")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


class WebhookSink:
    """POSTs JSON to a webhook URL; 2xx is success, 429/5xx and network errors are retried."""

    channel: Literal["webhook"] = "webhook"

    def __init__(
        self,
        url: str,
        fmt: WebhookFormat = "slack",
        *,
        name: str = "webhook",
        chat_id: str | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        session: aiohttp.ClientSession | None = None,
        register: bool = True,
    ) -> None:
        """``register``: add the URL to the log redaction list (operator sinks; user URLs are not logged)."""
        if fmt == "telegram" and not chat_id:
            raise ValueError(f"webhook sink {name}: the telegram format needs a chat_id")
        if fmt not in _MAX_TEXT:
            raise ValueError(f"webhook sink {name}: unknown format {fmt!r}")
        self.url, self.fmt, self.name, self.chat_id = url, fmt, name, chat_id
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.retry = retry or RetryPolicy()
        self._session = session
        self.target = describe_url(url)
        if register:
            register_secret(url)

    def _clean(self, text: str) -> str:
        return redact_text(text.replace(self.url, self.target))

    async def _post_once(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> int:
        try:
            async with session.post(self.url, json=payload, timeout=self.timeout) as resp:
                await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if isinstance(exc, aiohttp.InvalidURL):
                raise _Permanent(self._clean(_short(exc))) from None
            raise _Transient(self._clean(_short(exc))) from None
        if 200 <= status < 300:
            return status
        if status == 429 or status >= 500 or status == 408:
            raise _Transient(f"HTTP {status}", status)
        raise _Permanent(f"HTTP {status}", status)

    async def deliver(self, message: Message) -> DeliveryResult:
        payload = webhook_payload(self.fmt, message, self.chat_id)
        attempts = 0
        session = self._session
        own = session is None
        if session is None:
            session = aiohttp.ClientSession()
        try:
            async for attempt in self.retry.retrying():
                with attempt:
                    attempts += 1
                    status = await self._post_once(session, payload)
        except (_Transient, _Permanent) as exc:
            result = DeliveryResult(self.name, "webhook", self.target, False, attempts, str(exc), exc.status)
            log.warning(
                "alert delivery failed",
                sink=self.name,
                target=self.target,
                attempts=attempts,
                error=result.error,
            )
            return result
        finally:
            if own:
                await session.close()
        return DeliveryResult(self.name, "webhook", self.target, True, attempts, status=status)


class EmailSink:
    """Sends plain-text email over SMTP (smtplib, in a worker thread): STARTTLS, implicit TLS or none."""

    channel: Literal["email"] = "email"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: Sequence[str] = (),
        *,
        name: str = "email",
        tls: Literal["starttls", "ssl", "none"] = "starttls",
        ca_file: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        subject_prefix: str = "",
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        if tls not in ("starttls", "ssl", "none"):
            raise ValueError(f"email sink {name}: tls must be starttls, ssl or none")
        if username and tls == "none":
            raise ValueError(f"email sink {name}: refusing to send a password without TLS")
        self.host, self.port, self.sender, self.name = host, port, sender, name
        self.recipients = list(recipients)
        self.tls, self.username, self._password = tls, username, password
        self.subject_prefix, self.timeout = subject_prefix, timeout
        self.retry = retry or RetryPolicy()
        self._ssl = ssl.create_default_context()
        if ca_file is not None:
            self._ssl.load_verify_locations(cafile=str(ca_file))
        register_secret(password)

    def build(self, message: Message, to: Sequence[str]) -> EmailMessage:
        msg = EmailMessage()
        subject = f"{self.subject_prefix} {message.subject}".strip()
        msg["Subject"] = subject.replace("\n", " ")[:200]
        msg["From"] = self.sender
        msg["To"] = ", ".join(to)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        msg.set_content(message.text)
        return msg

    def _send_sync(self, msg: EmailMessage, to: Sequence[str]) -> None:
        try:
            smtp: smtplib.SMTP
            if self.tls == "ssl":
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self._ssl)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with smtp:
                smtp.ehlo()
                if self.tls == "starttls":
                    smtp.starttls(context=self._ssl)  # SMTPNotSupportedError if not offered: no downgrade
                    smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self._password or "")
                refused = smtp.send_message(msg, from_addr=self.sender, to_addrs=list(to))
            if refused:
                raise _Permanent(f"recipients refused: {sorted(refused)}")
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            err = f"recipients refused: {sorted(exc.recipients)}"
            if all(400 <= c < 500 for c in codes):
                raise _Transient(err, codes[0] if codes else None) from None
            raise _Permanent(err, codes[0] if codes else None) from None
        except smtplib.SMTPResponseException as exc:
            err = redact_text(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}"[:300])
            if 400 <= exc.smtp_code < 500:
                raise _Transient(err, exc.smtp_code) from None
            raise _Permanent(err, exc.smtp_code) from None
        except (smtplib.SMTPNotSupportedError, ssl.SSLCertVerificationError) as exc:
            raise _Permanent(redact_text(_short(exc))) from None
        except (smtplib.SMTPException, OSError) as exc:  # disconnects, refused connections, timeouts
            raise _Transient(redact_text(_short(exc))) from None

    async def deliver(self, message: Message, to: Sequence[str] | None = None) -> DeliveryResult:
        """Sends to ``to`` (a user's address), else to the configured operator ``recipients``."""
        rcpt = list(to) if to else self.recipients
        target = ", ".join(rcpt)
        if not rcpt:
            return DeliveryResult(self.name, "email", target, False, 0, "no recipients")
        msg = self.build(message, rcpt)
        attempts = 0
        try:
            async for attempt in self.retry.retrying():
                with attempt:
                    attempts += 1
                    await asyncio.to_thread(self._send_sync, msg, rcpt)
        except (_Transient, _Permanent) as exc:
            result = DeliveryResult(self.name, "email", target, False, attempts, str(exc), exc.status)
            log.warning(
                "alert delivery failed", sink=self.name, target=target, attempts=attempts, error=result.error
            )
            return result
        return DeliveryResult(self.name, "email", target, True, attempts)
