"""What to send to whom: operator alerts (de-dup + cool-down) and users' warning-tier crossings.

The decisions are pure and synchronous — :class:`CooldownGate`, :func:`crossing`,
:class:`CrossingTracker`, :func:`plan_user_deliveries`, the message builders — and unit-tested without
I/O. :class:`AlertDispatcher` is the edge: it asks them what to do and lets the sinks do it.

User warnings (tiers from :mod:`keeper.risk.book`, hysteresis already applied there):

* WARNING (MR < 150%) → a *message*: a webhook post sent silently where the service supports it
  (Telegram ``disable_notification``);
* DANGER (MR < 120%) → a *push*: a webhook post with notification;
* LIQUIDATABLE (MR < 110%) → a push and an email.

Each line notifies once per crossing: not again until the account's tier went back above that line
(which, thanks to the book's hysteresis, means a real recovery) and crossed it again. A jump over
several lines sends one notice, for the worst line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import aiohttp

from keeper.alerts.contacts import Contact, ContactRegistry
from keeper.alerts.sinks import DeliveryResult, EmailSink, Message, RetryPolicy, Sink, WebhookSink
from keeper.observability.logging import get_logger
from keeper.risk.math import WarningTier

__all__ = [
    "DEEP_REORG_PREFIX",
    "NOTIFY_LINES",
    "AlertDispatcher",
    "AlertKind",
    "Channel",
    "CooldownGate",
    "CrossingTracker",
    "OperatorAlert",
    "PlannedDelivery",
    "Severity",
    "UserNotice",
    "crossing",
    "deep_reorg_alert",
    "operator_message",
    "plan_user_deliveries",
    "user_message",
]

log = get_logger(__name__)


# ----------------------------------------------------------------------------- operator alerts


class AlertKind(StrEnum):
    UNTRUSTED_ORACLE = "untrusted_oracle"
    KEEPER_BALANCE_LOW = "keeper_balance_low"
    INDEX_LAG = "index_lag"
    FUND_SHORTFALL = "fund_shortfall"
    DEEP_REORG = "deep_reorg"
    ANOMALY = "anomaly"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class OperatorAlert:
    """An operator alert. ``subject`` narrows the de-dup key (a market, an anomaly rule, ...)."""

    kind: AlertKind
    text: str
    subject: str = ""
    severity: Severity = Severity.WARNING

    @property
    def key(self) -> str:
        return f"{self.kind.value}:{self.subject}" if self.subject else self.kind.value


def alert_key(kind: AlertKind, subject: str = "") -> str:
    return f"{kind.value}:{subject}" if subject else kind.value


@dataclass
class _GateEntry:
    last_sent: float
    active: bool = True


class CooldownGate:
    """Same key not re-sent within ``cooldown`` seconds, unless it was resolved in between (pure)."""

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self._entries: dict[str, _GateEntry] = {}

    def should_send(self, key: str, now: float) -> bool:
        """Whether to send ``key`` now; records the send when it says yes."""
        entry = self._entries.get(key)
        if entry is not None and entry.active and now - entry.last_sent < self.cooldown:
            return False
        self._entries[key] = _GateEntry(now)
        return True

    def resolve(self, key: str) -> bool:
        """Marks ``key`` resolved; True when it was active (a resolution worth announcing)."""
        entry = self._entries.get(key)
        if entry is None or not entry.active:
            return False
        entry.active = False
        return True

    def active(self) -> list[str]:
        return sorted(k for k, e in self._entries.items() if e.active)


#: How the indexer's error starts when a reorg went deeper than its window (keeper.indexer.sync).
DEEP_REORG_PREFIX = "reorg deeper than the window"


def deep_reorg_alert(exc: BaseException) -> OperatorAlert | None:
    """The ``deep_reorg`` alert for the indexer stopping on a reorg deeper than its window, else None
    (the indexer cannot repair that in place, so the operator must act before anything else)."""
    if type(exc).__name__ != "DeepReorg" and not str(exc).startswith(DEEP_REORG_PREFIX):
        return None
    return OperatorAlert(
        AlertKind.DEEP_REORG,
        f"the indexer stopped: {exc}. The keeper exits; liquidations stop until it is re-indexed.",
        severity=Severity.CRITICAL,
    )


def operator_message(alert: OperatorAlert, *, resolved: bool = False) -> Message:
    what = alert.kind.value.replace("_", " ")
    about = f" ({alert.subject})" if alert.subject else ""
    if resolved:
        return Message(f"RESOLVED {what}{about}", alert.text or f"{what}{about} is back to normal")
    return Message(f"[{alert.severity.value.upper()}] {what}{about}", alert.text)


# ----------------------------------------------------------------------------- user warnings


class Channel(StrEnum):
    MESSAGE = "message"  # webhook, silent where supported
    PUSH = "push"  # webhook, with notification
    EMAIL = "email"


#: The lines users are told about, and how.
NOTIFY_LINES: dict[WarningTier, frozenset[Channel]] = {
    WarningTier.WARNING: frozenset({Channel.MESSAGE}),
    WarningTier.DANGER: frozenset({Channel.PUSH}),
    WarningTier.LIQUIDATABLE: frozenset({Channel.PUSH, Channel.EMAIL}),
}
_LINE_TEXT = {
    WarningTier.WARNING: ("margin warning", "150%"),
    WarningTier.DANGER: ("DANGER: close to liquidation", "120%"),
    WarningTier.LIQUIDATABLE: ("LIQUIDATABLE: your account can be liquidated now", "110%"),
}


def notified_level(tier: WarningTier) -> WarningTier:
    """The worst notify line at or above which ``tier`` sits (HEALTHY when above every line)."""
    level = WarningTier.HEALTHY
    for line in NOTIFY_LINES:
        if tier >= line:
            level = max(level, line)
    return level


def crossing(previous: WarningTier, tier: WarningTier) -> tuple[WarningTier, WarningTier | None]:
    """(new notified level, line to notify or None), given the last notified level and the new tier.

    Worse than the notified level → notify the worst line crossed; better → re-arm the lines recovered.
    """
    level = notified_level(tier)
    if level > previous:
        return level, level
    return level, None


@dataclass(frozen=True)
class UserNotice:
    account: str
    tier: WarningTier
    channels: frozenset[Channel]
    ratio_bps: int | None = None


class CrossingTracker:
    """Per-account notified level; ``update`` says when a line is crossed (pure, in memory)."""

    def __init__(self) -> None:
        self._level: dict[str, WarningTier] = {}

    def seed(self, account: str, tier: WarningTier) -> None:
        """At start-up: accounts already past a line are not re-notified for it."""
        level = notified_level(tier)
        if level > WarningTier.HEALTHY:
            self._level[account.lower()] = level

    def update(self, account: str, tier: WarningTier, ratio_bps: int | None = None) -> UserNotice | None:
        acct = account.lower()
        level, line = crossing(self._level.get(acct, WarningTier.HEALTHY), tier)
        if level > WarningTier.HEALTHY:
            self._level[acct] = level
        else:
            self._level.pop(acct, None)
        if line is None:
            return None
        return UserNotice(acct, line, NOTIFY_LINES[line], ratio_bps)

    def forget(self, account: str) -> None:
        self._level.pop(account.lower(), None)


def user_message(notice: UserNotice) -> Message:
    title, line = _LINE_TEXT[notice.tier]
    ratio = f"{notice.ratio_bps / 100:.1f}%" if notice.ratio_bps is not None else f"below {line}"
    text = (
        f"Account {notice.account}: margin ratio {ratio} (line {line}). "
        "Add collateral or reduce your position to stay clear of liquidation (liquidation below 110%)."
    )
    if notice.tier == WarningTier.LIQUIDATABLE:
        text = (
            f"Account {notice.account}: margin ratio {ratio}, below the 110% maintenance line. "
            "Keepers may liquidate it at any moment; add collateral or close now."
        )
    return Message(f"Zanbara: {title}", text, silent=Channel.MESSAGE in notice.channels)


@dataclass(frozen=True)
class PlannedDelivery:
    channel: Literal["webhook", "email"]
    account: str
    message: Message
    contact: Contact = field(compare=False)


def plan_user_deliveries(notice: UserNotice, contact: Contact | None) -> list[PlannedDelivery]:
    """The deliveries for ``notice`` given what the user registered (pure)."""
    if contact is None:
        return []
    msg = user_message(notice)
    out: list[PlannedDelivery] = []
    if contact.webhook_url and notice.channels & {Channel.MESSAGE, Channel.PUSH}:
        out.append(PlannedDelivery("webhook", notice.account, msg, contact))
    if contact.email and Channel.EMAIL in notice.channels:
        out.append(PlannedDelivery("email", notice.account, msg, contact))
    return out


# ----------------------------------------------------------------------------- the edge


class AlertDispatcher:
    """Sends operator alerts and user warnings through the sinks; records every DeliveryResult.

    ``on_result`` is called with each result (the caller stores them); results are also returned.
    """

    def __init__(
        self,
        operator_sinks: Sequence[Sink] = (),
        *,
        contacts: ContactRegistry | None = None,
        email: EmailSink | None = None,
        cooldown: float = 900.0,
        send_resolved: bool = True,
        retry: RetryPolicy | None = None,
        user_webhook_timeout: float = 10.0,
        on_result: Callable[[DeliveryResult], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_concurrency: int = 32,
    ) -> None:
        self.operator_sinks = list(operator_sinks)
        self.contacts = contacts
        self.email = email
        self.gate = CooldownGate(cooldown)
        self.tracker = CrossingTracker()
        self.send_resolved = send_resolved
        self.retry = retry or RetryPolicy()
        self.user_webhook_timeout = user_webhook_timeout
        self.on_result = on_result
        self.clock = clock
        self._alerts: dict[str, OperatorAlert] = {}
        self._sem = asyncio.Semaphore(max_concurrency)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(
        cls,
        alerts: Any,  # keeper.config.AlertSettings
        *,
        contacts: ContactRegistry | None = None,
        on_result: Callable[[DeliveryResult], Any] | None = None,
    ) -> AlertDispatcher:
        retry = RetryPolicy(alerts.retry_attempts, alerts.retry_initial_backoff, alerts.retry_max_backoff)
        sinks: list[Sink] = [
            WebhookSink(h.url, h.format, name=h.name, chat_id=h.chat_id, timeout=h.timeout, retry=retry)
            for h in alerts.webhooks
        ]
        email: EmailSink | None = None
        if alerts.email is not None:
            e = alerts.email
            password = None
            if e.password_file is not None:
                try:
                    password = e.password_file.read_text().rstrip("\r\n")
                except OSError as exc:
                    from keeper.errors import KeeperError

                    raise KeeperError(f"cannot read alerts.email.password_file: {exc.strerror}") from None
            email = EmailSink(
                e.host,
                e.port,
                e.sender,
                e.recipients,
                tls=e.tls,
                ca_file=e.ca_file,
                username=e.username,
                password=password,
                subject_prefix=e.subject_prefix,
                timeout=e.timeout,
                retry=retry,
            )
            if e.recipients:
                sinks.append(email)
        return cls(
            sinks,
            contacts=contacts if alerts.user_warnings else None,
            email=email,
            cooldown=alerts.cooldown_seconds,
            send_resolved=alerts.send_resolved,
            retry=retry,
            user_webhook_timeout=alerts.user_webhook_timeout,
            on_result=on_result,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _run(self, key: str, sends: Iterable[Any]) -> list[DeliveryResult]:
        async def one(coro: Any) -> DeliveryResult:
            async with self._sem:
                res: DeliveryResult = await coro
            return DeliveryResult(**{**res.__dict__, "key": key})

        results = list(await asyncio.gather(*(one(c) for c in sends)))
        for r in results:
            if self.on_result is not None:
                self.on_result(r)
        return results

    # --- operators

    async def alert(self, alert: OperatorAlert) -> list[DeliveryResult]:
        """Sends ``alert`` to every operator sink unless its key is cooling down."""
        if not self.gate.should_send(alert.key, self.clock()):
            log.debug("operator alert suppressed (cool-down)", alert=alert.key)
            return []
        self._alerts[alert.key] = alert
        log.warning("operator alert", alert=alert.key, severity=alert.severity.value, text=alert.text)
        msg = operator_message(alert)
        return await self._run(alert.key, (s.deliver(msg) for s in self.operator_sinks))

    async def resolve(self, kind: AlertKind, subject: str = "") -> list[DeliveryResult]:
        """The condition behind (kind, subject) cleared: re-arms it and announces it if it was sent."""
        key = alert_key(kind, subject)
        if not self.gate.resolve(key):
            return []
        alert = self._alerts.pop(key, OperatorAlert(kind, "", subject))
        log.info("operator alert resolved", alert=key)
        if not self.send_resolved:
            return []
        msg = operator_message(OperatorAlert(kind, "", subject, alert.severity), resolved=True)
        return await self._run(key, (s.deliver(msg) for s in self.operator_sinks))

    # --- users

    async def tier_changed(
        self, account: str, tier: WarningTier, *, ratio_bps: int | None = None
    ) -> list[DeliveryResult]:
        """Feed every tier change from the book; sends the warnings a crossing calls for."""
        notice = self.tracker.update(account, tier, ratio_bps)
        if notice is None or self.contacts is None:
            return []
        plans = plan_user_deliveries(notice, self.contacts.get(notice.account))
        log.info("user warning", account=notice.account, tier=notice.tier.name, deliveries=len(plans))
        return await self._run(notice.account, (self._deliver_user(p) for p in plans))

    async def _deliver_user(self, plan: PlannedDelivery) -> DeliveryResult:
        c = plan.contact
        if plan.channel == "webhook":
            assert c.webhook_url is not None
            sink = WebhookSink(
                c.webhook_url,
                c.webhook_format,
                name="user-webhook",
                chat_id=c.chat_id,
                timeout=self.user_webhook_timeout,
                retry=self.retry,
                session=self._http(),
                register=False,
            )
            return await sink.deliver(plan.message)
        if self.email is None:
            return DeliveryResult("user-email", "email", c.email or "", False, 0, "no SMTP server configured")
        assert c.email is not None
        return await self.email.deliver(plan.message, to=[c.email])
