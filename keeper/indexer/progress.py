"""Backfill progress: a one-line bar (blocks, events/s, ETA) on a TTY, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("keeper.indexer")


def _eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN / inf
        return "--:--"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _rate(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


class Progress:
    """Call :meth:`begin` with the block range, :meth:`update` after each committed range, :meth:`end`."""

    def __init__(
        self, stream: TextIO | None = None, *, tty: bool | None = None, interval: float = 5.0
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval if not self.tty else 0.1
        self.first = self.last = self.target = 0
        self.events = 0
        self.t0 = self._last_out = 0.0
        self.active = False

    def begin(self, first: int, target: int) -> None:
        self.first, self.last, self.target = first, first - 1, target
        self.events = 0
        self.t0 = self._last_out = time.monotonic()
        self.active = True

    def update(self, block: int, events: int) -> None:
        if not self.active:
            return
        self.last = block
        self.events += events
        now = time.monotonic()
        if now - self._last_out >= self.interval or block >= self.target:
            self._last_out = now
            self._emit(now)

    def end(self) -> None:
        if not self.active:
            return
        self.active = False
        now = time.monotonic()
        if self.tty:
            self._emit(now)
            self.stream.write("\n")
            self.stream.flush()
        dt = max(now - self.t0, 1e-9)
        log.info(
            "indexed blocks %d-%d: %d events in %.1f s (%s events/s)",
            self.first, self.last, self.events, dt, _rate(self.events / dt),
        )  # fmt: skip

    def _emit(self, now: float) -> None:
        total = max(1, self.target - self.first + 1)
        done = max(0, self.last - self.first + 1)
        frac = min(1.0, done / total)
        dt = max(now - self.t0, 1e-9)
        eta = (dt / frac - dt) if frac > 0 else float("inf")
        ev_rate = _rate(self.events / dt)
        if self.tty:
            width = 30
            filled = int(frac * width)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(
                f"\r[{bar}] {frac * 100:5.1f}%  block {self.last:,}/{self.target:,}  "
                f"{self.events:,} events  {ev_rate} ev/s  ETA {_eta(eta)}   "
            )
            self.stream.flush()
        else:
            log.info(
                "indexed to block %d of %d (%.1f%%), %d events, %s events/s, ETA %s",
                self.last, self.target, frac * 100, self.events, ev_rate, _eta(eta),
            )  # fmt: skip
