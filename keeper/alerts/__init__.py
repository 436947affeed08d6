"""Operator alerts and user warnings: pure decisions (dispatcher) and I/O at the edges (sinks)."""

from keeper.alerts.contacts import Contact, ContactRegistry, InMemoryContacts, SqlContacts
from keeper.alerts.dispatcher import AlertDispatcher, AlertKind, OperatorAlert, Severity
from keeper.alerts.sinks import DeliveryResult, EmailSink, Message, RetryPolicy, WebhookSink

__all__ = [
    "AlertDispatcher",
    "AlertKind",
    "Contact",
    "ContactRegistry",
    "DeliveryResult",
    "EmailSink",
    "InMemoryContacts",
    "Message",
    "OperatorAlert",
    "RetryPolicy",
    "Severity",
    "SqlContacts",
    "WebhookSink",
]
