"""The indexer's runner: checkpoint, confirmations, reorg window, pipelined backfill and live tail.

One step (:meth:`Indexer.sync_once`):

1. ``eth_chainId`` + ``eth_blockNumber`` in one batch: a wrong chain id stops the indexer
   (KeeperError); a head lower than the last one seen is reported (warning) and nothing is indexed
   past it.
2. Tip check: the chain's hash at the checkpoint block must equal the checkpoint's hash (when the
   head is below the checkpoint, the highest stored block at or below the head is compared: equal
   means a lagging node, reported and waited for; different means a reorg).
3. Catch up to ``head - confirmations``: a producer task fetches ranges ahead (``eth_getLogs`` with an
   adaptive span, headers of the range's ends and of the part within the reorg window, the ``to``
   header fetched before and after the logs so that logs and headers come from the same chain) into
   a bounded asyncio queue, while the consumer decodes and writes the previous range in a worker
   thread. Each range must link to the checkpoint (parent hash of its first block): a mismatch is a
   reorg.
4. Reorg: the stored window (block hashes of the last ``reorg_window`` blocks) is compared with the
   chain, newest first; the highest block still on the chain is the fork point. Rollback above it and
   the index of the new blocks after it are ONE transaction with the checkpoint. No stored block on
   the chain: KeeperError "reorg deeper than the window".

The tip check runs at start-up too, so a reorg that happened while the keeper was down is caught.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import heapq
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from keeper.chain.logs import RangeTooLarge, classify_range_error, get_logs_raw
from keeper.chain.rpc import MissingBlock, RpcClient, RpcError, RpcTransportError, RpcUnavailable
from keeper.errors import KeeperError
from keeper.indexer import scan
from keeper.indexer.derive import Deriver
from keeper.indexer.fetch import AdaptiveRange
from keeper.indexer.prepare import (
    Prepared,
    RawFailure,
    prepare_in_worker,
    prepare_raw,
    warm_up,
    watch_parent,
)
from keeper.indexer.progress import Progress
from keeper.indexer.records import BlockHeader
from keeper.indexer.split import Piece, split_by_block
from keeper.indexer.spool import MIN_BYTES as SPOOL_MIN_BYTES
from keeper.indexer.spool import Spool, Spooled, remove_stale
from keeper.indexer.writer import ChainChanged, CheckpointState, FetchedRange, IndexStore

log = logging.getLogger("keeper.indexer")

MAX_RANGE_FAILURES = 10  # consecutive range errors at the minimum span before giving up
MAX_REORG_ATTEMPTS = 10
#: while the decode workers start, an answer this big waits for them (smaller ones are decoded here)
POOL_WAIT_BYTES = 1 << 20
#: fetched ranges the producer may hold behind a slower earlier one, in units of fetch_concurrency
FETCH_LOOKAHEAD = 2
#: a range with more than this many times target_logs is cut into pieces, or fetched again smaller
OVERSIZED = 3
#: an oversized answer is cut up to this size; a bigger one is fetched again, smaller (the answer and its
#: pieces are in memory at once: about 850 bytes a log, so 64 MiB is some 75,000 logs, 15 x target_logs)
MAX_SPLIT_BYTES = 64 << 20


@dataclass
class SyncOptions:
    confirmations: int = 0
    reorg_window: int = 128
    poll_interval: float = 1.0
    initial_range: int = 2_000
    min_range: int = 1
    max_range: int = 100_000
    pipeline_depth: int = 1
    #: log queries in flight at once (each range's answer is parsed and decoded as it arrives)
    fetch_concurrency: int = 3
    #: processes that parse, decode and fold ranges during a backfill (0: threads only)
    decode_workers: int = 2
    #: a catch-up of at least this many blocks uses the decode workers (the live tail does not)
    workers_from_blocks: int = 256
    #: niceness added to the decode workers (the keeper's own process first on a busy CPU)
    decode_niceness: int = 10
    #: a tmpfs where the keeper and its decode workers leave each other answers and rows (None: the
    #: pool's pipes only; :mod:`keeper.indexer.spool`)
    spool_dir: str | None = "/dev/shm"
    #: answers at least this big (and their rows) go through the spool; smaller ones through the pipes
    spool_min_bytes: int = SPOOL_MIN_BYTES
    #: ranges already fetched are written together, in one transaction, up to this many ranges...
    group_ranges: int = 8
    #: ... or this many logs
    group_logs: int = 40_000
    target_logs: int = 5_000
    #: span of the first range of a run: the chain's density is unknown until then, and a dense chain
    #: must not arrive as one huge answer (memory); :class:`AdaptiveRange` grows it from there.
    first_range: int = 16

    @classmethod
    def from_settings(cls, s: Any) -> SyncOptions:
        return cls(
            confirmations=s.confirmations,
            reorg_window=s.reorg_window,
            poll_interval=s.poll_interval,
            initial_range=s.initial_range,
            min_range=s.min_range,
            max_range=s.max_range,
            pipeline_depth=getattr(s, "pipeline_depth", 1),
            target_logs=getattr(s, "target_logs", 5_000),
            first_range=getattr(s, "first_range", 16),
            fetch_concurrency=getattr(s, "fetch_concurrency", 3),
            decode_workers=getattr(s, "decode_workers", 2),
            workers_from_blocks=getattr(s, "workers_from_blocks", 256),
            decode_niceness=getattr(s, "decode_niceness", 10),
            spool_dir=getattr(s, "spool_dir", "/dev/shm") or None,
        )


@dataclass
class SyncStats:
    events: int = 0
    ranges: int = 0
    #: answers sent to the decode workers, and packed rows returned, through the spool
    #: (:mod:`keeper.indexer.spool`) rather than the pool's pipes
    spooled_answers: int = 0
    spooled_rows: int = 0
    reorgs: int = 0
    last_reorg_depth: int = 0
    events_removed: int = 0
    head: int | None = None


class Indexer:
    def __init__(
        self,
        rpc: RpcClient,
        store: IndexStore,
        options: SyncOptions | None = None,
        *,
        progress: Progress | None = None,
        ws_url: str | None = None,
        metrics: Any = None,
        head_age: bool = False,
        workers: ProcessPoolExecutor | None = None,
    ) -> None:
        self.rpc = rpc
        self.store = store
        self.target = store.target
        self.opts = options or SyncOptions()
        self.progress = progress
        self.ws_url = ws_url
        #: optional :class:`keeper.observability.metrics.KeeperMetrics` (index lag, events, reorgs, RPC
        #: errors)
        self.metrics = metrics
        #: with ``metrics``: each poll also reads the latest header (in the same batch as the head's
        #: number) and feeds its timestamp to ``keeper_head_age_seconds`` (``keeper index``; under
        #: ``keeper run`` the operator watch feeds it instead)
        self.head_age = head_age
        self.range = AdaptiveRange(
            min(self.opts.initial_range, max(self.opts.first_range, self.opts.min_range)),
            self.opts.min_range,
            self.opts.max_range,
            self.opts.target_logs,
        )
        self.cp: CheckpointState | None = None
        self.stats = SyncStats()
        self._pool: ProcessPoolExecutor | None = None
        self._pool_starting: asyncio.Future[ProcessPoolExecutor] | None = None
        #: decode workers forked before the run began (:func:`fork_decode_workers`), for its first catch-up
        self._forked = workers
        self._workers_broken = False  # a pool failed once: threads from then on
        self._spool: Spool | None = None  # during a catch-up with decode workers
        #: jobs on the decode workers, lowest block first (the writer takes ranges in chain order)
        self._decode_turns = LowestFirst(max(1, self.opts.decode_workers))
        self._deriver = Deriver(store.decoder)  # folds in threads (no database, no row cache)
        self._last_head: int | None = None
        self._wake = asyncio.Event()
        self._behind_reported: int | None = None

    # ------------------------------------------------------------------------------ start-up

    async def start(self) -> CheckpointState:
        """Checks the chain id, creates or loads the checkpoint, and checks the window against the chain."""
        cid, head = await self.rpc.chain_id_and_head()
        self._check_chain_id(cid)
        remove_stale(self.opts.spool_dir)  # left by a keeper killed during a backfill
        cp = await asyncio.to_thread(self.store.checkpoint)
        if cp is None:
            start = self.target.start_block
            if start > head + 1:
                raise KeeperError(
                    f"the start block {start} is above the chain head {head}: "
                    "wrong chain or deployments file?"
                )
            base = None
            if start > 0:
                base = BlockHeader.from_rpc((await self.rpc.headers([start - 1]))[start - 1])
            cp = await asyncio.to_thread(self.store.initialize, base)
            log.info("new index of chain %d from block %d", cp.chain_id, cp.start_block)
        else:
            self.store.check_target(cp)
            if cp.start_block != self.target.start_block:
                log.warning(
                    "the index started at block %d; the start block %d applies to a fresh database only",
                    cp.start_block, self.target.start_block,
                )  # fmt: skip
        self.cp = cp
        self._last_head = head
        if not scan.AVAILABLE:
            log.warning(
                "the indexer's C log scanner is not built (no C compiler when it was installed?): decoding "
                "in Python, with about twice the CPU; `make setup` builds it"
            )
        if self.store.rows_as == "staged":
            log.warning(
                "the indexer's packed rows (keeper/store/_packed.c) are not built or not usable with this "
                "Python's sqlite3: decode workers stage rows in SQLite databases instead, with more CPU"
            )
        await self._check_tip(head)
        return self.cp

    def _check_chain_id(self, cid: int) -> None:
        if cid != self.target.chain_id:
            raise KeeperError(
                f"wrong chain: the RPC node {self.rpc.url} serves chain id {cid}, the deployment is on chain "
                f"{self.target.chain_id}; not indexing"
            )

    # ------------------------------------------------------------------------------ one step

    async def sync_once(self) -> tuple[int, int]:
        """Indexes up to the current safe head; returns (checkpoint block, safe head)."""
        if self.cp is None:
            await self.start()
        assert self.cp is not None
        cid, head = await self._poll_head()
        self._check_chain_id(cid)
        if self._last_head is not None and head < self._last_head:
            log.warning(
                "the chain head went backwards from %d to %d (a lagging node or a rollback)",
                self._last_head,
                head,
            )
        self._last_head = head
        self.stats.head = head
        self._observe(0, head)
        for _ in range(MAX_REORG_ATTEMPTS):
            if not await self._check_tip(head):
                return self.cp.number, head - self.opts.confirmations
            safe = head - self.opts.confirmations
            if safe <= self.cp.number or await self._catch_up(safe, head):
                return self.cp.number, safe
            # the chain changed during the catch-up: check the tip again at the new head
            cid, head = await self._poll_head()
            self._check_chain_id(cid)
            self._last_head = self.stats.head = head
        raise KeeperError(
            "the chain keeps changing under the indexer (reorgs during every attempt): giving up"
        )

    async def _poll_head(self) -> tuple[int, int]:
        """Chain id and head number (one batch); with ``head_age``, the latest header in the same batch,
        its timestamp observed as the chain head's (whatever ``confirmations``: the head itself)."""
        if not self.head_age or self.metrics is None:
            return await self.rpc.chain_id_and_head()
        cid, number, latest = await self.rpc.batch(
            [("eth_chainId", []), ("eth_blockNumber", []), ("eth_getBlockByNumber", ["latest", False])],
            raise_errors=True,
        )
        if isinstance(latest, dict) and latest.get("timestamp") is not None:
            self.metrics.observe_head(int(latest["timestamp"], 16))
        return int(cid, 16), int(number, 16)

    async def _check_tip(self, head: int) -> bool:
        """True when the checkpoint is on the chain (after handling a reorg if there was one)."""
        assert self.cp is not None
        for _ in range(MAX_REORG_ATTEMPTS):
            cp = self.cp
            if cp.hash is None:  # nothing indexed yet, from genesis
                return True
            if cp.number <= head:
                try:
                    h = (await self.rpc.headers([cp.number]))[cp.number]["hash"].lower()
                except MissingBlock:
                    h = None
                if h == cp.hash:
                    self._behind_reported = None
                    return True
            else:
                stored = [(n, hh) for n, hh in await asyncio.to_thread(self.store.window_blocks) if n <= head]
                if stored:
                    n, hh = stored[0]
                    try:
                        h = (await self.rpc.headers([n]))[n]["hash"].lower()
                    except MissingBlock:
                        h = None
                    if h == hh:
                        if self._behind_reported != head:
                            log.warning(
                                "the chain head %d is below the checkpoint %d and on the same chain: "
                                "a lagging node (or a rollback not followed by new blocks yet); waiting",
                                head, cp.number,
                            )  # fmt: skip
                            self._behind_reported = head
                        return False
                else:  # the head is below the whole window: nothing to compare, nothing to index yet
                    if self._behind_reported != head:
                        log.warning(
                            "the chain head %d is more than the reorg window below the checkpoint %d: "
                            "a lagging or resyncing node? waiting",
                            head, cp.number,
                        )  # fmt: skip
                        self._behind_reported = head
                    return False
            if await self._reorg():
                return True
            _, head = await self.rpc.chain_id_and_head()
        raise KeeperError(
            "the chain keeps changing under the indexer (reorgs during every attempt): giving up"
        )

    # ------------------------------------------------------------------------------ reorg

    async def _reorg(self) -> bool:
        """Finds the fork point in the window, rolls back and re-indexes in one transaction."""
        assert self.cp is not None
        cid, head = await self.rpc.chain_id_and_head()
        self._check_chain_id(cid)
        remove_stale(self.opts.spool_dir)  # left by a keeper killed during a backfill
        window = await asyncio.to_thread(self.store.window_blocks)
        cands = [(n, h) for n, h in window if n <= head]
        fork: tuple[int, str] | None = None
        if cands:
            try:
                chain = await self.rpc.headers([n for n, _ in cands])
            except MissingBlock:
                return False  # the chain moved again: try again
            for n, h in cands:
                if chain[n]["hash"].lower() == h:
                    fork = (n, h)
                    break
        if fork is None:
            lo = window[-1][0] if window else None
            hi = window[0][0] if window else None
            raise KeeperError(
                f"reorg deeper than the window: none of the {len(window)} stored blocks ({lo}..{hi}) is "
                f"on the chain any more (indexer.reorg_window = {self.opts.reorg_window}); the index cannot "
                "be repaired in place: re-index into a fresh database (or raise indexer.reorg_window)"
            )
        depth = self.cp.number - fork[0]
        safe = head - self.opts.confirmations
        fr: FetchedRange | None = None
        if safe > fork[0]:
            to = min(safe, fork[0] + max(self.range.size, min(depth, self.opts.max_range)))
            try:
                (piece,) = await self._fetch_adaptive(fork[0] + 1, to, head, split=False)
                fr = await piece.task
            except ChainChanged:
                return False
            if fr.parent_hash != fork[1]:
                return False
        # A shorter new chain moves the window down: fetch the (unchanged) blocks it now reaches.
        new_cp = fr.to_block if fr is not None else fork[0]
        lo = max(self.target.start_block - 1, 0, new_cp - self.opts.reorg_window)
        lowest = await asyncio.to_thread(self.store.lowest_block)
        older: list[BlockHeader] = []
        if lowest is not None and lo < lowest.number:
            try:
                got = await self.rpc.headers(list(range(lo, lowest.number)))
            except MissingBlock:
                return False
            older = [BlockHeader.from_rpc(got[n]) for n in range(lo, lowest.number)]
            linked = [*older, lowest]
            if any(b.parent_hash != a.hash for a, b in zip(linked, linked[1:], strict=False)):
                return False
        old = self.cp
        new, removed = await _shielded(asyncio.to_thread(self.store.commit_reorg, fork, fr, old, older))
        self.cp = new
        added = fr.count if fr is not None else 0
        self.stats.reorgs += 1
        self.stats.last_reorg_depth = depth
        if self.metrics is not None:
            self.metrics.record_reorg(depth)
        self._observe(added, head)
        self.stats.events_removed += removed
        self.stats.events += added
        log.warning(
            "reorg: blocks above %d replaced (depth %d, checkpoint was %d); %d events rolled back, "
            "%d re-indexed, checkpoint now %d",
            fork[0], depth, old.number, removed, added, new.number,
        )  # fmt: skip
        return True

    # ------------------------------------------------------------------------------ fetching

    async def _fetch_range(self, frm: int, to: int, head: int, limit: int | None = None) -> FetchedRange:
        """Logs and headers of [frm, to] from one consistent chain (ChainChanged otherwise), prepared.

        ``limit``: an answer with more logs raises :class:`_Oversized` before it is parsed.
        """
        (piece,) = await self._fetch_pieces(frm, to, head, limit, split=False)
        return await piece.task

    async def _fetch_pieces(
        self, frm: int, to: int, head: int, limit: int | None, split: bool
    ) -> list[_Piece]:
        """Logs and headers of [frm, to] from one consistent chain (ChainChanged otherwise), as pieces
        whose ranges are prepared in the background (each piece's task gives its FetchedRange).

        An answer of more than ``limit`` logs raises :class:`_Oversized` before it is parsed, unless
        ``split`` and it is at most MAX_SPLIT_BYTES: it is then cut into consecutive block-aligned
        pieces of about target_logs each (:func:`keeper.indexer.split.split_by_block`), decoded in
        parallel, and each piece is handed on as soon as it is decoded (the node's work is not thrown
        away, and the writer does not wait for the last piece to start on the first)."""
        t0 = time.monotonic()
        try:
            pre = await self.rpc.headers([to])
        except MissingBlock as exc:
            raise ChainChanged(str(exc)) from None
        raw = await get_logs_raw(self.rpc, frm, to, self.target.addresses)
        if not isinstance(raw, bytes):  # a JSON-RPC answer that came with a non-200 status
            raw = orjson.dumps(raw)
        n = scan.count_logs(raw)  # a scan of the answer: only to size ranges, decoding checks it
        pieces: list[Piece] | None = None
        if limit is not None and n > limit:
            if split and len(raw) <= MAX_SPLIT_BYTES:
                pieces = split_by_block(raw, frm, to, n, self.range.target_logs)
            if pieces is None:
                raise _Oversized(n)
            log.debug("eth_getLogs %d-%d: %d logs, decoded in %d pieces", frm, to, n, len(pieces))
        if pieces is None:
            pieces = [(frm, to, raw)]
        del raw
        w = self.opts.reorg_window
        numbers = {a for a, _, _ in pieces} | {b for _, b, _ in pieces}
        if to > head - 2 * w - self.opts.confirmations:
            numbers.update(range(max(frm, to - w), to + 1))
        headers_task = asyncio.ensure_future(self.rpc.headers(sorted(numbers)))
        jobs = [asyncio.ensure_future(self._prepare_piece(body, a, b, headers_task)) for a, b, body in pieces]
        spans = [(a, b, n if len(pieces) == 1 else scan.count_logs(body)) for a, b, body in pieces]
        del pieces  # each piece's bytes are freed once its job is done, not after the last one
        try:
            try:
                raw_headers = await headers_task
            except MissingBlock as exc:
                raise ChainChanged(str(exc)) from None
            headers = {n: BlockHeader.from_rpc(h) for n, h in raw_headers.items()}
            if headers[to].hash != pre[to]["hash"].lower():
                raise ChainChanged(f"block {to} changed while its range was fetched")
            nums = sorted(headers)
            for a, b in zip(nums, nums[1:], strict=False):
                if b == a + 1 and headers[b].parent_hash != headers[a].hash:
                    raise ChainChanged(f"blocks {a} and {b} do not link")
        except BaseException:
            await _cancelled(jobs)
            raise
        if len(jobs) == 1:  # decoded here: an answer that is an error is the caller's to handle
            try:
                fr = await self._piece_range(jobs[0], frm, to, headers, False, t0)
            except BaseException:
                await _cancelled(jobs)
                raise
            done: asyncio.Future[FetchedRange] = asyncio.get_running_loop().create_future()
            done.set_result(fr)
            return [_Piece(frm, to, n, done)]
        return [
            _Piece(a, b, logs, asyncio.ensure_future(self._piece_range(job, a, b, headers, True, t0)))
            for job, (a, b, logs) in zip(jobs, spans, strict=True)
        ]

    async def _piece_range(
        self,
        job: asyncio.Future[Prepared],
        a: int,
        b: int,
        headers: dict[int, BlockHeader],
        cut: bool,
        t0: float,
    ) -> FetchedRange:
        """The FetchedRange of blocks a-b once their piece is prepared, its logs checked against the
        headers fetched after them."""
        try:
            p = await job
        except MissingBlock as exc:  # the headers of a node without blockTimestamp in its logs
            raise ChainChanged(str(exc)) from None
        except (RangeTooLarge, RpcError) as exc:
            if not cut:
                raise
            raise ChainChanged(f"a piece of a cut answer could not be read ({exc})") from None
        if p.problem is not None:
            # the chain changed under the query, or a cut that did not hold: the catch-up stops at the
            # pieces before this one, and the next one fetches again from there (a smaller range)
            raise ChainChanged(p.problem + (" (in a piece of a cut answer)" if cut else ""))
        for bn, h in p.blocks.items():
            hdr = headers.get(bn)
            if hdr is not None and hdr.hash != h:
                raise ChainChanged(f"log of block {bn} from another chain")
        own = {k: v for k, v in headers.items() if a <= k <= b}
        return FetchedRange(a, b, [], own, time.monotonic() - t0, p)

    async def _prepare_piece(
        self, body: bytes, frm: int, to: int, headers_task: asyncio.Future[dict[int, Any]]
    ) -> Prepared:
        """One range's (or piece's) raw answer prepared; a node whose logs carry no blockTimestamp gets
        them from the headers (``headers_task``, shared by the pieces of one answer)."""
        prepared = _raise_failure(await self._prepare(body, frm, to, {}))
        if prepared.missing_timestamps:
            got = await headers_task
            extra = [n for n in prepared.missing_timestamps if n not in got]
            if extra:
                got.update(await self.rpc.headers(extra))
            ts = {n: int(got[n]["timestamp"], 16) for n in prepared.missing_timestamps}
            prepared = _raise_failure(await self._prepare(body, frm, to, ts))
            if prepared.missing_timestamps:
                raise ChainChanged(f"no timestamp for blocks {list(prepared.missing_timestamps)}")
        return prepared

    async def _prepare(self, raw: bytes, frm: int, to: int, ts: dict[int, int]) -> Prepared | RawFailure:
        """Parse, decode and fold a raw answer: in a worker process during a backfill, else in a thread."""
        cid, contracts = self.target.chain_id, self.target.contracts
        starting = self._pool_starting
        if self._pool is None and starting is not None and len(raw) >= POOL_WAIT_BYTES:
            # a big answer while the workers start: wait for them rather than decode it here, where
            # it would hold the GIL that the writer and the fetching need
            with contextlib.suppress(Exception):
                await asyncio.shield(starting)
        if self._pool is not None:
            loop = asyncio.get_running_loop()
            spool = self._spool if len(raw) >= self.opts.spool_min_bytes else None
            sent: Spooled | None = None
            try:
                back = str(spool.directory) if spool is not None and self.store.rows_as else None
                async with self._decode_turns.turn(frm):
                    if self._pool is None:  # failed while this job waited
                        raise BrokenProcessPool("decode workers stopped")
                    # spooled only now: a copy that waits for its turn would only take memory
                    sent = spool.put(raw) if spool is not None else None
                    job = (sent or raw, frm, to, ts, cid, contracts, self.store.rows_as, back)
                    try:
                        got = await loop.run_in_executor(self._pool, prepare_in_worker, *job)
                    except OSError as exc:  # the worker could not map the spool file: the pipe then
                        if sent is None:
                            raise
                        log.warning("decode worker could not read %s (%s): answer sent again by pipe",
                                    sent.path, exc)  # fmt: skip
                        sent, job = None, (raw, *job[1:])
                        got = await loop.run_in_executor(self._pool, prepare_in_worker, *job)
                self.stats.spooled_answers += sent is not None
                if isinstance(got, Prepared) and got.staged is not None and got.staged.spooled is not None:
                    self.stats.spooled_rows += 1
                return got
            except BrokenProcessPool as exc:  # e.g. killed, or an unguarded __main__ re-run by a worker
                if self._pool is not None:
                    log.warning("decode workers failed (%s): decoding in the keeper's process instead", exc)
                    self._stop_pool()
                    self._workers_broken = True
            finally:
                if sent is not None:  # read and unlinked by the worker, unless the job never ran
                    with contextlib.suppress(OSError):
                        os.unlink(sent.path)
        decoder, deriver = self.store.decoder, self._deriver
        return await asyncio.to_thread(prepare_raw, raw, frm, to, ts, cid, contracts, decoder, deriver)

    async def _fetch_adaptive(self, frm: int, max_to: int, head: int, split: bool = True) -> list[_Piece]:
        """Consecutive ranges from ``frm`` to at most ``max_to``, the span set by :class:`AdaptiveRange`
        (one range, or the pieces of an oversized answer with ``split``: see :meth:`_fetch_pieces`)."""
        failures = 0
        while True:
            to = min(max_to, frm + self.range.size - 1)
            span = to - frm + 1
            limit = OVERSIZED * self.range.target_logs if span > self.range.minimum else None
            try:
                pieces = await self._fetch_pieces(frm, to, head, limit, split)
            except RangeTooLarge as exc:
                log.info("eth_getLogs %d-%d (%d blocks) refused: %s", frm, to, span, str(exc)[:200])
                if span <= self.range.minimum:  # cannot shrink: a flaky provider, or one that cannot answer
                    failures += 1
                    if failures >= MAX_RANGE_FAILURES:
                        raise RpcUnavailable(
                            f"eth_getLogs keeps failing on a {span}-block range at {frm}: {exc}"
                        ) from None
                    await asyncio.sleep(min(2.0, 0.05 * 2**failures))
                self.range.too_large(span, exc, frm)
                continue
            except _Oversized as exc:
                # A dense stretch after sparse ones, in an answer that could not be cut (or too big to
                # hold): fetch it again, smaller (the answer is dropped unparsed), so that what is
                # decoded and written at once (and the memory it takes) stays bounded by target_logs,
                # whatever the chain's length.
                self.range.success(span, exc.count)
                log.info(
                    "eth_getLogs %d-%d: %d logs (target %d): fetching %d blocks instead",
                    frm, to, exc.count, self.range.target_logs, self.range.size,
                )  # fmt: skip
                continue
            self.range.success(span, sum(p.logs for p in pieces))
            return pieces

    async def _fetch_cover(self, frm: int, to: int, head: int) -> list[_Piece]:
        """Ranges covering exactly [frm, to] (split when the node or the log count asks for it).

        When the first range comes back shorter than asked (a denser stretch than the span was sized
        for), the rest is fetched in pieces of the new span, ``fetch_concurrency`` at a time: a dense
        stretch is not walked one small range after the other.
        """
        first = await self._fetch_adaptive(frm, to, head)
        if first[-1].to_block >= to:
            return first
        pieces, cur = [], first[-1].to_block + 1
        while cur <= to:
            pieces.append((cur, min(to, cur + self.range.size - 1)))
            cur = pieces[-1][1] + 1
        slots = asyncio.Semaphore(max(1, self.opts.fetch_concurrency))

        async def piece(a: int, b: int) -> list[_Piece]:
            async with slots:
                return await self._fetch_cover(a, b, head)

        tasks = [asyncio.ensure_future(piece(a, b)) for a, b in pieces]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            await _dropped(tasks, first)  # after a failure the others are not needed
            raise
        return [*first, *(p for part in parts for p in part)]

    async def _produce(self, start: int, safe: int, head: int, queue: asyncio.Queue[Any]) -> None:
        """Fetches ranges ahead, ``fetch_concurrency`` at a time, and queues them in chain order.

        A fetch that finishes while an earlier one is still running frees its slot for the next one
        (up to FETCH_LOOKAHEAD times ``fetch_concurrency`` fetched ranges held back): one slow answer (a
        dense stretch, tens of MB) does not leave the node and the decode workers idle behind it.
        """
        pending: collections.deque[asyncio.Future[list[_Piece]]] = collections.deque()
        ready: collections.deque[_Piece] = collections.deque()  # the earliest fetch's, in chain order
        cur = start
        running = max(1, self.opts.fetch_concurrency)
        held = running * FETCH_LOOKAHEAD

        def launch() -> None:
            nonlocal cur
            while cur <= safe and len(pending) < held:
                if sum(not f.done() for f in pending) >= running:
                    break
                size, k = self.range.size, self.range.parts(min(running, held - len(pending)))
                if k == 1:
                    to = min(safe, cur + size - 1)
                    pending.append(asyncio.ensure_future(self._fetch_cover(cur, to, head)))
                    cur = to + 1
                    continue
                # a span wider than any answered yet, in k parts at once (AdaptiveRange.parts); they
                # grow the range together, as one range of their whole span would
                end, part = min(safe, cur + size - 1), -(-size // k)
                spans = [(a, min(end, a + part - 1)) for a in range(cur, end + 1, part)]
                group = _Growth(self.range, end - cur + 1, len(spans))
                for a, b in spans:
                    pending.append(asyncio.ensure_future(group.track(self._fetch_cover(a, b, head))))
                cur = end + 1

        try:
            while cur <= safe or pending or ready:
                # the next fetches start before this one's ranges wait for their decoding or for room
                # in the queue: the node and the decode workers are not left idle meanwhile
                launch()
                if ready:
                    task = ready[0].task
                    if not task.done():
                        waits: list[asyncio.Future[Any]] = [task, *(f for f in pending if not f.done())]
                        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                        continue
                    ready.popleft()
                    await queue.put(task.result())
                    continue
                if not pending[0].done():
                    await asyncio.wait(
                        [f for f in pending if not f.done()], return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                ready.extend(pending.popleft().result())
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            await queue.put(exc)
        finally:
            await _dropped(pending, ready)

    async def _catch_up(self, safe: int, head: int) -> bool:
        """Indexes up to ``safe``; False when it stopped early because the chain changed."""
        assert self.cp is not None
        completed = False
        depth = max(1, self.opts.pipeline_depth, self.opts.group_ranges)
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=depth)
        big = safe - self.cp.number > 1
        if (
            safe - self.cp.number >= self.opts.workers_from_blocks
            and self.opts.decode_workers > 0
            and not self._workers_broken
        ):
            self._start_pool()
        producer = asyncio.create_task(self._produce(self.cp.number + 1, safe, head, queue))
        if self.progress is not None and big:
            self.progress.begin(self.cp.number + 1, safe)
        held: Any = _NOTHING  # an item taken from the queue while grouping (None too), not handled yet
        try:
            while True:
                item, held = (held, _NOTHING) if held is not _NOTHING else (await queue.get(), _NOTHING)
                if item is None:
                    completed = True
                    break
                if isinstance(item, ChainChanged):
                    log.info("chain changed while fetching (%s): checking for a reorg", item)
                    break
                if isinstance(item, BaseException):
                    raise item
                fr: FetchedRange = item
                if self.cp.hash is not None and fr.parent_hash != self.cp.hash:
                    log.info(
                        "block %d does not link to the checkpoint %d: reorg", fr.from_block, self.cp.number
                    )
                    break
                # ranges already fetched and linked are written in the same transaction
                group, n = [fr], fr.count
                while len(group) < self.opts.group_ranges and n < self.opts.group_logs and not queue.empty():
                    nxt = queue.get_nowait()
                    if isinstance(nxt, FetchedRange) and nxt.parent_hash == group[-1].to_hash:
                        group.append(nxt)
                        n += nxt.count
                    else:
                        held = nxt
                        break
                old = self.cp
                self.cp = await _shielded(asyncio.to_thread(self.store.commit_ranges, group, old))
                self.stats.events += n
                self.stats.ranges += len(group)
                self._observe(n, head)
                if self.progress is not None and big:
                    self.progress.update(group[-1].to_block, n)
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
            self._stop_pool()
            if self._spool is not None:  # after the last commit: what is left was never written
                self._spool.close()
                self._spool = None
            if self.progress is not None and big:
                self.progress.end()
        return completed

    def _start_pool(self) -> None:
        """The decode workers: those forked at start-up (:func:`fork_decode_workers`), if this is the
        run's first catch-up, else started in a thread through the forkserver, which imports the
        decoding modules (about 0.5 s) while the first ranges are fetched and prepared here;
        :meth:`_prepare` uses the pool from the moment it is ready."""
        if self._pool is not None or self._pool_starting is not None:
            return
        if self._spool is None:
            self._spool = Spool.open(self.opts.spool_dir)
        if self._forked is not None:
            self._pool, self._forked = self._forked, None
            log.info("decode workers: %d, forked at start-up", self.opts.decode_workers)
            return
        log.info("decode workers: %d, starting through the forkserver", self.opts.decode_workers)
        starting = asyncio.get_running_loop().run_in_executor(None, self._new_pool)
        self._pool_starting = starting

        def ready(f: asyncio.Future[ProcessPoolExecutor]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if self._pool_starting is not f:  # stopped meanwhile: not needed any more
                if exc is None:
                    f.result().shutdown(wait=False, cancel_futures=True)
                return
            self._pool_starting = None
            if exc is not None:
                log.warning("decode workers did not start (%s): decoding in the keeper's process", exc)
                self._workers_broken = True
            else:
                self._pool = f.result()

        starting.add_done_callback(ready)

    def _new_pool(self) -> ProcessPoolExecutor:
        """Decode workers for a backfill: forked from a clean server process that imported the decoding
        modules once (nothing shared with this process's threads, no import per worker)."""
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["keeper.indexer.prepare"])
        pool = ProcessPoolExecutor(
            self.opts.decode_workers, mp_context=ctx, initializer=watch_parent,
            initargs=(os.getpid(), self.opts.decode_niceness),
        )  # fmt: skip
        for _ in range(self.opts.decode_workers):
            pool.submit(warm_up)  # the decoder is built while the first ranges are fetched
        return pool

    def _stop_pool(self) -> None:
        self._pool_starting = None  # a pool still starting is shut down once ready (see _start_pool)
        if self._forked is not None:  # forked for the first catch-up, which did not need it
            self._forked.shutdown(wait=False, cancel_futures=True)
            self._forked = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _observe(self, events: int, head: int) -> None:
        if self.metrics is None or self.cp is None:
            return
        if events:
            self.metrics.record_events(events)
        self.metrics.index_lag.set(max(0, head - self.cp.number))

    # ------------------------------------------------------------------------------ loops

    async def run(self, *, until_head: bool = False, stop: asyncio.Event | None = None) -> CheckpointState:
        """Backfills, then (unless ``until_head``) follows the chain until ``stop`` is set."""
        await self.start()
        if until_head:
            for _ in range(3):  # the head may move during a long backfill: a couple of passes
                cp, safe = await self.sync_once()
                if cp >= safe:
                    break
            assert self.cp is not None
            return self.cp
        ws_task = asyncio.create_task(self._ws_waker(self.ws_url)) if self.ws_url else None
        failures = 0
        try:
            while stop is None or not stop.is_set():
                try:
                    await self.sync_once()
                    failures = 0
                except (RpcTransportError, RpcError) as exc:
                    failures += 1
                    if self.metrics is not None:
                        self.metrics.rpc_errors.labels(kind=type(exc).__name__).inc()
                    delay = min(30.0, self.opts.poll_interval * 2**failures)
                    log.warning("RPC trouble (%s); retrying in %.1f s", exc, delay)
                    await _sleep_or(stop, delay)
                    continue
                self._wake.clear()
                waits = [asyncio.create_task(self._wake.wait())]
                if stop is not None:
                    waits.append(asyncio.create_task(stop.wait()))
                _done, pending = await asyncio.wait(
                    waits, timeout=self.opts.poll_interval, return_when=asyncio.FIRST_COMPLETED
                )
                for t in pending:
                    t.cancel()
        finally:
            if ws_task is not None:
                ws_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ws_task
        assert self.cp is not None
        return self.cp

    async def _ws_waker(self, url: str) -> None:
        """Subscribes to newHeads and wakes the poller on each; polling alone still works without it."""
        backoff = 1.0
        while True:
            try:
                async with aiohttp.ClientSession() as session, session.ws_connect(url, heartbeat=30) as ws:
                    await ws.send_bytes(
                        orjson.dumps(
                            {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}
                        )
                    )
                    log.info("subscribed to newHeads on %s", url)
                    backoff = 1.0
                    async for msg in ws:
                        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            try:
                                data = orjson.loads(msg.data)
                            except orjson.JSONDecodeError:
                                continue
                            if isinstance(data, dict) and data.get("method") == "eth_subscription":
                                self._wake.set()
                        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the poller goes on regardless
                log.info(
                    "newHeads subscription on %s failed (%s); polling only, retrying in %.0f s",
                    url,
                    exc,
                    backoff,
                )
            await asyncio.sleep(backoff)
            backoff = min(60.0, backoff * 2)


_NOTHING = object()


def fork_decode_workers(count: int, niceness: int = 0) -> ProcessPoolExecutor | None:
    """Decode workers forked from this process, now, for the first backfill of a run (None: not here).

    Forked, a worker starts in milliseconds with the decoder already built; through the forkserver it
    imports the decoding modules first (about 0.5 s, with the backfill's first ranges waiting). Forking
    is only safe while this process has a single thread (a lock held by another thread would stay
    held in the child forever), so this runs before the event loop and returns None if any other thread
    is alive: the indexer then starts its workers through the forkserver, as for later backfills. The
    children never touch the parent's database connections or sockets; they leave through
    ``os._exit`` (no cleanup of inherited objects), and the objects they inherit are frozen out of their
    cycle collector (``gc.freeze``), which therefore never finalizes one of them (a connection, say).
    ``niceness`` is added to each worker's (``indexer.decode_niceness``).
    """
    if count <= 0 or threading.active_count() != 1 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    warm_up()  # built here once, inherited by every worker
    pool = ProcessPoolExecutor(
        count, mp_context=multiprocessing.get_context("fork"), initializer=watch_parent,
        initargs=(os.getpid(), niceness),
    )  # fmt: skip
    gc.freeze()
    try:
        pool.submit(warm_up)  # with fork, the first job forks every worker at once, before any thread
    finally:
        gc.unfreeze()  # in this process only: the children keep theirs frozen
    return pool


class LowestFirst:
    """At most ``slots`` holders at once; a freed slot goes to the waiter with the lowest key.

    The decode workers' jobs take turns by their first block: ranges fetched ahead (the fetches run
    concurrently, and a dense range arrives after lighter ones behind it) must not keep the workers
    from the range the writer needs next."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0

    @contextlib.asynccontextmanager
    async def turn(self, key: int) -> Any:
        if self.free > 0 and not self._waiting:
            self.free -= 1
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._seq += 1
            heapq.heappush(self._waiting, (key, self._seq, fut))
            try:
                await fut  # the slot is handed over with the result: ``free`` was not raised for it
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():  # handed a slot just as it was cancelled
                    self._release()
                else:
                    self._waiting = [w for w in self._waiting if w[2] is not fut]
                    heapq.heapify(self._waiting)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


class _Growth:
    """The parts of one span fetched at once (see ``_produce``): once all are in, their span and logs
    count as one answer's for the range's growth (each part alone is narrower than the range)."""

    def __init__(self, rng: AdaptiveRange, span: int, parts: int) -> None:
        self.range, self.span, self.left, self.logs = rng, span, parts, 0

    async def track(self, fetch: Any) -> list[_Piece]:
        pieces: list[_Piece] = await fetch
        self.logs += sum(p.logs for p in pieces)
        self.left -= 1
        if self.left == 0 and self.logs < self.range.target_logs:
            self.range.success(self.span, self.logs)
        return pieces


@dataclass
class _Piece:
    """Blocks from_block-to_block of an answer (``logs`` of them), fetched and checked against the
    headers; ``task`` prepares them and gives their FetchedRange (see ``Indexer._fetch_pieces``)."""

    from_block: int
    to_block: int
    logs: int
    task: asyncio.Future[FetchedRange]


async def _dropped(fetches: Sequence[asyncio.Future[list[_Piece]]], pieces: Sequence[_Piece] = ()) -> None:
    """Cancels fetches and the preparing of their pieces (those of the fetches already done, and
    ``pieces``), and waits for all of it to finish."""
    await _cancelled(fetches)
    done = [p for f in fetches if not f.cancelled() and f.exception() is None for p in f.result()]
    await _cancelled([p.task for p in [*pieces, *done]])


async def _cancelled(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancels those of ``tasks`` not done yet and waits for all of them to finish."""
    for t in tasks:
        if not t.done():
            t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


class _Oversized(Exception):
    """A log answer with far more logs than the range's target (fetched again, smaller)."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} logs")
        self.count = count


def _raise_failure(p: Prepared | RawFailure) -> Prepared:
    """The prepared range, or the exception :func:`keeper.chain.logs.get_logs` raises for the same answer."""
    if isinstance(p, Prepared):
        return p
    if p.kind == "rpc":
        err = RpcError(p.code, p.message, p.data, "eth_getLogs")
        rng = classify_range_error(err)
        raise rng if rng is not None else err
    if p.kind == "malformed":
        rng = classify_range_error(RpcTransportError(p.message, malformed=True))
        assert rng is not None
        raise rng
    raise RangeTooLarge(f"{p.message}: shrinking the range")


async def _shielded(coro: Any) -> Any:
    """Lets a database commit finish even when the task is cancelled (Ctrl-C): no half-done ranges."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


async def _sleep_or(stop: asyncio.Event | None, seconds: float) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
