"""Real alert receivers for tests that run the keeper as a subprocess: an aiohttp webhook server and an
aiosmtpd SMTP server, each on a loopback port, serving from a background thread.

``Inbox.posts`` keeps every JSON body POSTed to ``/hook/<name>`` in arrival order; ``Inbox.mails`` every
message received over SMTP (recipients, subject, body). ``wait_for`` polls them with a deadline.
"""

from __future__ import annotations

import asyncio
import email
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller

from keeper.devchain.anvil import free_port


@dataclass
class Mail:
    to: list[str]
    subject: str
    body: str


@dataclass
class Inbox:
    posts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    mails: list[Mail] = field(default_factory=list)
    hook_base: str = ""  # http://127.0.0.1:<port>/hook
    smtp_port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def texts(self, name: str) -> list[str]:
        """First lines (the subject) of the posts to ``/hook/<name>``, in order."""
        with self.lock:
            return [str(b.get("text", b.get("content", ""))).split("\n")[0] for b in self.posts.get(name, [])]

    def subjects(self, to: str | None = None) -> list[str]:
        with self.lock:
            return [m.subject for m in self.mails if to is None or to in m.to]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
        msg = email.message_from_bytes(envelope.content)
        body = msg.get_payload(decode=True) or b""
        with self.lock:
            self.mails.append(
                Mail(list(envelope.rcpt_tos), str(msg["Subject"]), body.decode(errors="replace"))
            )
        return "250 OK"


def wait_for(
    what: str, cond: Callable[[], bool], timeout: float, alive: Callable[[], None] | None = None
) -> None:
    """Polls ``cond`` until true; ``alive`` raises (e.g. the keeper process died) to stop early."""
    deadline = time.monotonic() + timeout
    while not cond():
        if alive is not None:
            alive()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@contextmanager
def receivers() -> Iterator[Inbox]:
    """A webhook server and an SMTP server on loopback, stopped on exit."""
    inbox = Inbox()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner: web.AppRunner | None = None

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        with inbox.lock:
            inbox.posts.setdefault(request.match_info["name"], []).append(body)
        return web.Response(text="ok")

    async def start() -> None:
        nonlocal runner
        app = web.Application()
        app.router.add_post("/hook/{name}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        inbox.hook_base = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        ready.set()

    thread = threading.Thread(target=loop.run_forever, name="webhook-receiver", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    ready.wait(10)
    inbox.smtp_port = free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=inbox.smtp_port)
    smtp.start()
    try:
        yield inbox
    finally:
        smtp.stop()
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def alert_env(inbox: Inbox, *, operator_email: bool = True) -> dict[str, str]:
    """KEEPER_* variables sending operator alerts to ``/hook/ops`` (and ops@example.org), with fast
    retries; user webhooks on loopback allowed (tests only)."""
    env = {
        "KEEPER_ALERTS__WEBHOOKS": f'[{{"name": "ops", "url": "{inbox.hook_base}/ops"}}]',
        "KEEPER_ALERTS__ALLOW_PRIVATE_WEBHOOKS": "true",
        "KEEPER_ALERTS__RETRY_ATTEMPTS": "3",
        "KEEPER_ALERTS__RETRY_INITIAL_BACKOFF": "0.05",
        "KEEPER_ALERTS__RETRY_MAX_BACKOFF": "0.2",
    }
    recipients = '["ops@example.org"]' if operator_email else "[]"
    env["KEEPER_ALERTS__EMAIL"] = (
        f'{{"host": "127.0.0.1", "port": {inbox.smtp_port}, "tls": "none", "sender": "keeper@example.org", '
        f'"recipients": {recipients}, "subject_prefix": ""}}'
    )
    return env
