"""The keeper's schedule: APScheduler (3.x, asyncio) running jobs keyed to **chain time**.

* One instance of each job at a time (``max_instances=1``), missed runs coalesced into one
  (``coalesce=True``, no misfire grace limit): a slow pass never stacks up behind itself.
* APScheduler only polls (every ``poll`` wall seconds); **whether a job is due is decided on chain time**,
  the latest block's timestamp (:class:`ChainClock`), never the wall clock: a job declared
  ``every=3600`` runs once per hour-aligned period of block time (``ts // every`` changes), however many
  periods were skipped (coalesced), and a dev chain whose time is warped (``evm_setNextBlockTimestamp``)
  drives the schedule exactly like a live one. ``every=None``: on every poll that sees a new head.

    sched = KeeperSchedule(ChainClock(rpc))
    sched.add("funding", settler_job, poll=1.0)              # each new head: settle what is due
    sched.add("whales", whale_job, every=3600, poll=5.0)     # once per chain hour
    sched.start(); ...; await sched.shutdown()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from keeper.chain.rpc import RpcClient

__all__ = ["ChainTick", "ChainClock", "ChainJob", "KeeperSchedule"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChainTick:
    block: int
    timestamp: int


class ChainClock:
    """The chain's time: the latest block's number and timestamp (one RPC call per read)."""

    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc
        self.last: ChainTick | None = None

    async def read(self) -> ChainTick:
        b = await self.rpc.call("eth_getBlockByNumber", ["latest", False])
        tick = ChainTick(int(b["number"], 16), int(b["timestamp"], 16))
        if self.last is None or tick.block >= self.last.block:
            self.last = tick
        return self.last


JobFn = Callable[[ChainTick], Awaitable[Any]]


@dataclass
class ChainJob:
    name: str
    fn: JobFn
    every: int | None  # chain seconds; None: each new head
    poll: float
    last_key: int | None = None  # the period (every) or block (None) it last ran for
    runs: int = 0
    skipped: int = 0
    errors: int = 0
    running: bool = False
    last_error: str | None = None

    def key(self, tick: ChainTick) -> int:
        return tick.timestamp // self.every if self.every else tick.block

    def due(self, tick: ChainTick) -> bool:
        return self.last_key is None or self.key(tick) > self.last_key


@dataclass
class KeeperSchedule:
    clock: ChainClock
    jobs: dict[str, ChainJob] = field(default_factory=dict)
    scheduler: AsyncIOScheduler | None = None

    def add(self, name: str, fn: JobFn, *, every: int | None = None, poll: float = 1.0) -> ChainJob:
        if name in self.jobs:
            raise ValueError(f"job {name!r} already scheduled")
        job = self.jobs[name] = ChainJob(name, fn, every, poll)
        if self.scheduler is not None:
            self._register(job)
        return job

    def _register(self, job: ChainJob) -> None:
        assert self.scheduler is not None
        self.scheduler.add_job(
            self.run_job,
            IntervalTrigger(seconds=job.poll),
            args=[job.name],
            id=job.name,
            name=job.name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            replace_existing=True,
        )

    async def run_job(self, name: str, tick: ChainTick | None = None) -> bool:
        """Runs ``name`` if it is due at chain time ``tick`` (read now when None); True when it ran."""
        job = self.jobs[name]
        if job.running:  # belt and braces: also when called outside APScheduler
            job.skipped += 1
            return False
        job.running = True
        try:
            tick = tick or await self.clock.read()
            if not job.due(tick):
                return False
            try:
                await job.fn(tick)
                job.runs += 1
                job.last_error = None
            except Exception as exc:  # noqa: BLE001 - one failing pass must not kill the schedule
                job.errors += 1
                job.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("job %s failed at block %d (t=%d)", name, tick.block, tick.timestamp)
                return False
            job.last_key = job.key(tick)  # a failed pass is retried on the next poll
            return True
        finally:
            job.running = False

    async def run_due(self) -> dict[str, bool]:
        """Every job once, at one chain time (tests, ``--once``)."""
        tick = await self.clock.read()
        return {name: await self.run_job(name, tick) for name in self.jobs}

    def start(self) -> None:
        self.scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        for job in self.jobs.values():
            self._register(job)
        self.scheduler.start()

    async def shutdown(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        for _ in range(100):  # let a running pass finish
            if not any(j.running for j in self.jobs.values()):
                return
            await asyncio.sleep(0.05)
