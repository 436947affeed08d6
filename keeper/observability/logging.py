"""Structured logs: structlog for the keeper, the stdlib (aiohttp, web3, sqlalchemy) routed through it.

Every line, whoever emitted it, passes one pipeline:

1. context from :mod:`contextvars` (``block``, ``account``, ``market``, ``tx`` — see :func:`bind`);
2. fields whose *name* looks secret (key, private, password, secret, ...) are dropped, in nested dicts too;
3. the event is rendered (JSON lines or a readable console line, exceptions included);
4. the rendered text goes through :func:`keeper.executor.keys.redact` (every loaded signing key) and
   through the extra secrets registered here (:func:`register_secret`: webhook URLs, SMTP password).

Step 4 is the last line of defence: a key that reached a message, a harmless-looking field or an
exception's text is still replaced by ``[redacted]``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import IO, Any

import orjson
import structlog
import structlog.tracebacks
from structlog.typing import EventDict, Processor, WrappedLogger

from keeper.executor import keys

__all__ = [
    "CONTEXT_FIELDS",
    "bind",
    "clear_context",
    "configure_logging",
    "drop_secret_fields",
    "get_logger",
    "log_context",
    "redact_text",
    "register_secret",
    "unbind",
]

#: Context the keeper binds while it works on something; merged into every line logged meanwhile.
CONTEXT_FIELDS = ("block", "account", "market", "tx")

_SECRET_NAME = re.compile(r"key|private|passw|pwd|secret|mnemonic|credential", re.IGNORECASE)
_EXTRA_SECRETS: set[str] = set()
_EXTRA_SORTED: list[str] = []
_HANDLER_MARK = "_keeper_log_handler"


def register_secret(value: str | None) -> None:
    """Adds a string (webhook URL with a token, SMTP password, ...) that must never appear in a log line.

    Meant for a handful of operator secrets: every log line is checked against each of them.
    """
    global _EXTRA_SORTED
    if value and len(value) >= 6 and value not in _EXTRA_SECRETS:  # short strings would shred text
        _EXTRA_SECRETS.add(value)
        _EXTRA_SORTED = sorted(_EXTRA_SECRETS, key=len, reverse=True)


def redact_text(text: str) -> str:
    """``text`` with every loaded key and every registered secret replaced by ``[redacted]``."""
    text = keys.redact(text)
    for secret in _EXTRA_SORTED:
        text = text.replace(secret, "[redacted]")
    return text


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _scrub(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _scrub(v) for k, v in value.items() if not (isinstance(k, str) and is_secret_name(k))}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub(v) for v in value)
    return value


def drop_secret_fields(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Processor: removes every field named like a secret (``private_key``, ``password``, ``api_secret``)."""
    for name in [k for k in event_dict if is_secret_name(k) and not k.startswith("_")]:
        del event_dict[name]
    for name, value in list(event_dict.items()):
        if isinstance(value, Mapping | list | tuple) and not name.startswith("_") and name != "exc_info":
            event_dict[name] = _scrub(value)
    return event_dict


def _redact_rendered(_logger: WrappedLogger, _name: str, rendered: Any) -> Any:
    """Final processor: the rendered line (a str, despite the processor signature) through redact_text."""
    text = rendered.decode() if isinstance(rendered, bytes) else str(rendered)
    return redact_text(text)


def _json_dumps(obj: Any, **_kw: Any) -> str:
    return orjson.dumps(obj, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    fmt: str = "console",
    level: str | int = "INFO",
    *,
    levels: Mapping[str, str] | None = None,
    colors: bool = False,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Configures structlog and the stdlib root logger; idempotent (replaces its own handler only).

    ``fmt`` is ``"json"`` (one JSON object per line) or ``"console"``. Returns the installed handler.
    """
    if fmt not in ("json", "console"):
        raise ValueError(f"unknown log format {fmt!r} (json or console)")
    renderer: Processor
    final: list[Processor]
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
        # No frame locals: a truncated repr could leak part of a key that redaction cannot match.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        final = [tracebacks, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback, sort_keys=False
        )
        final = [renderer]

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *_shared_processors(),
            structlog.stdlib.ExtraAdder(),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            drop_secret_fields,
            *final,
            _redact_rendered,
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    # Our previous handler, and plain stream/file handlers (logging.basicConfig) that would print
    # unscrubbed lines. Subclasses (pytest's capture handlers) are left alone.
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False) or type(old) in (logging.StreamHandler, logging.FileHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name, lvl in (levels or {}).items():
        logging.getLogger(name).setLevel(lvl.upper())
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # loggers made at import time follow later configuration
    )
    return handler


def configure_from_settings(settings: Any, *, stream: IO[str] | None = None) -> logging.Handler:
    """Logging from a :class:`keeper.config.Settings`; registers the configured secrets for redaction."""
    for value in (settings.dev.deployer_key, settings.dev.risk_admin_key, settings.dev.guardian_key):
        if value:
            bare = value.lower().removeprefix("0x")
            for v in (bare, "0x" + bare, bare.upper(), "0x" + bare.upper()):
                register_secret(v)
    alerts = settings.alerts
    for hook in alerts.webhooks:
        register_secret(hook.url)
    if alerts.email is not None and alerts.email.password_file is not None:
        with contextlib.suppress(OSError):  # reported when the sink is built
            register_secret(alerts.email.password_file.read_text().rstrip("\r\n"))
    cfg = settings.logging
    return configure_logging(cfg.format, cfg.level, levels=cfg.levels, colors=cfg.colors, stream=stream)


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger (``structlog.stdlib.BoundLogger``) named ``name``."""
    return structlog.get_logger(name, **initial)


def bind(
    *,
    block: int | None = None,
    account: str | None = None,
    market: int | str | None = None,
    tx: str | None = None,
    **extra: Any,
) -> None:
    """Binds context (only the given fields) to every line this task logs from now on."""
    given = (("block", block), ("account", account), ("market", market), ("tx", tx))
    values: MutableMapping[str, Any] = {k: v for k, v in given if v is not None}
    values.update(extra)
    structlog.contextvars.bind_contextvars(**values)


def unbind(*names: str) -> None:
    structlog.contextvars.unbind_contextvars(*names)


def clear_context() -> None:
    structlog.contextvars.clear_contextvars()


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """``with log_context(block=123, account=addr): ...`` — context bound for the block, then restored."""
    clean = {k: v for k, v in values.items() if v is not None}
    with structlog.contextvars.bound_contextvars(**clean):
        yield
