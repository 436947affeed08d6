"""Large byte strings between the keeper and its decode workers, through files in shared memory.

During a backfill every raw ``eth_getLogs`` answer goes to a decode worker and comes back as packed
rows: 177 MB and 150 MB for the bench chain. Through the process pool's pipes each is copied about five
times (pickled, written to the pipe, read in 64 KiB chunks, joined, unpickled) and bounces between the
two processes once per 64 KiB. Here the sender writes it once into a file on a tmpfs (``/dev/shm`` by
default: memory, never a disk) and sends its name; the receiver maps the file, reads it in place and
unlinks it at once. The two paths give the same bytes; the spool only takes less CPU (0.73 vs 0.19
CPU-s for the bench chain's answers sent and returned).

Each keeper process has its own directory, ``zanbara-keeper-spool-<pid>``, readable by its user only,
removed when the backfill's workers stop. A process killed with ``kill -9`` leaves it behind: the next
keeper to start in the same place removes every spool directory whose process is gone. Any
failure to write (no such directory, a full tmpfs: Docker gives containers 64 MB of ``/dev/shm``
unless told otherwise) sends that one string through the pipe instead.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "zanbara-keeper-spool-"
#: smaller strings go through the pipe: a file costs a few system calls, a small pickle less
MIN_BYTES = 256 << 10


@dataclass(frozen=True)
class Spooled:
    """A byte string left in a spool file (``path``) of ``size`` bytes, for one reader."""

    path: str
    size: int


class Spool:
    """This process's spool directory under ``root``; :meth:`put` leaves byte strings in it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._names = itertools.count()

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None) -> Spool | None:
        """A fresh spool directory under ``root``, after removing those of processes that are gone;
        None when ``root`` is None or not usable (the pipes are used then)."""
        if root is None:
            return None
        base = Path(root)
        try:
            remove_stale(base)
            directory = base / f"{PREFIX}{os.getpid()}"
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(mode=0o700)
        except OSError as exc:
            log.info("no spool under %s (%s): decode workers get their data through pipes", root, exc)
            return None
        return cls(directory)

    def put(self, data: bytes | Sequence[bytes]) -> Spooled | None:
        """``data`` (or its parts, one after another) in a new spool file; None if it cannot be
        written (the caller sends the bytes themselves)."""
        return write(str(self.directory), data, f"k{next(self._names)}")

    def close(self) -> None:
        """Removes the directory and whatever was not read (ranges dropped by a reorg, say)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def remove_stale(root: str | os.PathLike[str] | None) -> None:
    """Removes the spool directories under ``root`` whose keeper process is gone (killed with kill -9:
    nothing else removed them). Called as the indexer starts, and before each spool is opened."""
    if root is None:
        return
    with contextlib.suppress(OSError):
        for old in Path(root).glob(PREFIX + "*"):
            pid = old.name.removeprefix(PREFIX)
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)


_WORKER_NAMES = itertools.count()


def write(directory: str, data: bytes | Sequence[bytes], name: str | None = None) -> Spooled | None:
    """Writes ``data`` (bytes, or parts written one after another) to a new file in ``directory``;
    None when it cannot (the file is then removed). Usable from a worker, given the directory."""
    parts = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
    size = sum(len(p) for p in parts)
    path = os.path.join(directory, name or f"w{os.getpid()}-{next(_WORKER_NAMES)}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return None
    try:
        with open(fd, "wb", buffering=0) as f:
            for p in parts:
                view = memoryview(p)
                while view:  # a short write on a nearly full tmpfs: go on, or fail with ENOSPC
                    view = view[f.write(view) or 0 :]
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    return Spooled(path, size)


@contextlib.contextmanager
def mapped(ref: Spooled) -> Iterator[memoryview]:
    """The bytes of ``ref``, mapped in place (read-only); the file is unlinked at once, and its memory
    returned when the block ends (nothing may keep a view of it beyond that)."""
    with open(ref.path, "rb") as f:
        try:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if ref.size else None
        finally:
            os.unlink(ref.path)
    if m is None:
        yield memoryview(b"")
        return
    try:
        if len(m) != ref.size:
            raise OSError(f"spool file {ref.path} holds {len(m)} bytes, {ref.size} expected")
        with memoryview(m) as view:
            yield view
    finally:
        m.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
