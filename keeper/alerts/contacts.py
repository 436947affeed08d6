"""Where users want their warnings: account → webhook URL (with its format) and/or email address.

Two registries with one interface: :class:`InMemoryContacts` and :class:`SqlContacts` (table
``user_contact``). Accounts are stored lower-case. A user-supplied webhook URL is something the keeper
will POST to, so :func:`validate_webhook_url` refuses plain http and loopback/private/link-local
addresses unless ``allow_private`` (dev and tests).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol, cast
from urllib.parse import urlsplit

from sqlalchemy import Engine
from sqlmodel import Field, Session, SQLModel, select

from keeper.errors import KeeperError

__all__ = [
    "Contact",
    "ContactRegistry",
    "InMemoryContacts",
    "SqlContacts",
    "UserContact",
    "validate_email",
    "validate_webhook_url",
]

WebhookFormat = Literal["slack", "discord", "telegram"]
_FORMATS = ("slack", "discord", "telegram")
_EMAIL = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")


@dataclass(frozen=True)
class Contact:
    account: str
    webhook_url: str | None = None
    webhook_format: WebhookFormat = "slack"
    chat_id: str | None = None  # telegram
    email: str | None = None


def validate_webhook_url(url: str, *, allow_private: bool = False) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise KeeperError("webhook URL is not a URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise KeeperError("webhook URL must be http(s)://host/...")
    if allow_private:
        return url
    if parts.scheme != "https":
        raise KeeperError("webhook URL must use https")
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        raise KeeperError("webhook URL must not point at a local host")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return url  # a name: resolved at delivery (see module docstring of the dispatcher)
    if not ip.is_global:
        raise KeeperError("webhook URL must not point at a private, loopback or link-local address")
    return url


def validate_email(address: str) -> str:
    if not _EMAIL.match(address) or len(address) > 254:
        raise KeeperError("not an email address")
    return address


def validate_contact(contact: Contact, *, allow_private: bool = False) -> Contact:
    if contact.webhook_url is not None:
        validate_webhook_url(contact.webhook_url, allow_private=allow_private)
        if contact.webhook_format not in _FORMATS:
            raise KeeperError(f"webhook format must be one of {', '.join(_FORMATS)}")
        if contact.webhook_format == "telegram" and not contact.chat_id:
            raise KeeperError("a telegram webhook needs a chat_id")
    if contact.email is not None:
        validate_email(contact.email)
    return Contact(
        contact.account.lower(), contact.webhook_url, contact.webhook_format, contact.chat_id, contact.email
    )


class ContactRegistry(Protocol):
    def get(self, account: str) -> Contact | None: ...

    def set(self, contact: Contact) -> None: ...

    def remove(self, account: str) -> None: ...


class InMemoryContacts:
    def __init__(self, *, allow_private: bool = False) -> None:
        self._by_account: dict[str, Contact] = {}
        self.allow_private = allow_private

    def get(self, account: str) -> Contact | None:
        return self._by_account.get(account.lower())

    def set(self, contact: Contact) -> None:
        c = validate_contact(contact, allow_private=self.allow_private)
        self._by_account[c.account] = c

    def remove(self, account: str) -> None:
        self._by_account.pop(account.lower(), None)


class UserContact(SQLModel, table=True):
    """A user's registered warning contacts, per chain."""

    __tablename__ = "user_contact"

    chain_id: int = Field(primary_key=True)
    account: str = Field(primary_key=True, max_length=42)
    webhook_url: str | None = Field(default=None, max_length=2048)
    webhook_format: str = Field(default="slack", max_length=16)
    chat_id: str | None = Field(default=None, max_length=64)
    email: str | None = Field(default=None, max_length=254)
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class SqlContacts:
    """Contacts in the ``user_contact`` table (SQLite or PostgreSQL, through the keeper's engine)."""

    def __init__(self, engine: Engine, chain_id: int, *, allow_private: bool = False) -> None:
        self.engine, self.chain_id, self.allow_private = engine, chain_id, allow_private

    def create_table(self) -> None:
        """For tests and tools; production schemas come from migrations."""
        SQLModel.metadata.create_all(self.engine, tables=[UserContact.__table__])  # type: ignore[attr-defined]

    def get(self, account: str) -> Contact | None:
        with Session(self.engine) as s:
            row = s.get(UserContact, (self.chain_id, account.lower()))
            if row is None:
                return None
            return Contact(
                row.account, row.webhook_url, cast(WebhookFormat, row.webhook_format), row.chat_id, row.email
            )

    def set(self, contact: Contact) -> None:
        c = validate_contact(contact, allow_private=self.allow_private)
        with Session(self.engine) as s:
            row = s.get(UserContact, (self.chain_id, c.account))
            if row is None:
                row = UserContact(chain_id=self.chain_id, account=c.account)
            row.webhook_url, row.webhook_format, row.chat_id, row.email = (
                c.webhook_url,
                c.webhook_format,
                c.chat_id,
                c.email,
            )
            row.updated_at = datetime.now(UTC)
            s.add(row)
            s.commit()

    def remove(self, account: str) -> None:
        with Session(self.engine) as s:
            for row in s.exec(
                select(UserContact).where(
                    UserContact.chain_id == self.chain_id, UserContact.account == account.lower()
                )
            ):
                s.delete(row)
            s.commit()
