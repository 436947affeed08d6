"""The spool (keeper.indexer.spool): byte strings left in files of a tmpfs for another process to map.

What the indexer relies on: the bytes read are the bytes written; the reader's mapping unlinks the file
at once; a write that fails (a full tmpfs) leaves no file behind and says so, so that the caller sends
the bytes through the pipe instead; a spool directory left by a killed keeper is removed by the next
one, and a live keeper's is not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keeper.indexer.prepare import StagedRows
from keeper.indexer.spool import PREFIX, Spool, Spooled, mapped, remove_stale, write


def test_what_is_put_is_what_is_mapped_and_the_file_is_gone_once_mapped(tmp_path: Path) -> None:
    sp = Spool.open(tmp_path)
    assert sp is not None and sp.directory == tmp_path / f"{PREFIX}{os.getpid()}"
    assert (sp.directory.stat().st_mode & 0o777) == 0o700  # the keeper's user only
    data = os.urandom(3 << 20)
    ref = sp.put(data)
    assert ref is not None and ref.size == len(data) and Path(ref.path).exists()
    with mapped(ref) as view:
        assert not Path(ref.path).exists()  # unlinked as soon as it is mapped
        assert view.readonly and bytes(view) == data
    with pytest.raises(ValueError):  # released with the mapping: no view outlives it
        bytes(view)
    empty = sp.put(b"")
    assert empty is not None
    with mapped(empty) as view:
        assert bytes(view) == b""
    sp.close()
    assert not sp.directory.exists()


def test_parts_are_written_one_after_another_and_read_back_by_table(tmp_path: Path) -> None:
    parts = {"events": b"E" * 1000, "position_changes": b"", "fund_flows": os.urandom(777)}
    ref = write(str(tmp_path), list(parts.values()))
    assert ref is not None
    rows = StagedRows(3, spooled=ref, layout=tuple((n, len(b)) for n, b in parts.items()))
    with mapped(ref) as view:
        tables = rows.tables(view)
        assert {n: bytes(v) for n, v in tables.items()} == parts
        for v in tables.values():
            v.release()  # as the writer does before the mapping is closed


def test_a_write_that_fails_leaves_no_file_and_returns_none(tmp_path: Path) -> None:
    """A full tmpfs, as a file-size limit makes it (EFBIG where a tmpfs says ENOSPC): no file is left."""
    code = textwrap.dedent(
        f"""
        import resource, signal
        from keeper.indexer.spool import write
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        print(write({str(tmp_path)!r}, [b"x" * (600 << 10), b"y" * (600 << 10)]))
        print(write({str(tmp_path)!r}, b"z" * 1000, "small"))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    too_big, small = out.splitlines()
    assert too_big == "None"
    assert small.startswith("Spooled(") and sorted(p.name for p in tmp_path.iterdir()) == ["small"]
    assert write(str(tmp_path / "missing"), b"x") is None  # no such directory


def test_a_dead_keepers_spool_is_removed_and_a_live_ones_is_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    live = str(os.getppid())
    for pid in (dead, live):
        (tmp_path / f"{PREFIX}{pid}").mkdir()
        (tmp_path / f"{PREFIX}{pid}" / "k0").write_bytes(b"left over")
    (tmp_path / "other").mkdir()
    sp = Spool.open(tmp_path)
    assert sp is not None
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"{PREFIX}{live}", f"{PREFIX}{os.getpid()}", "other"])
    sp.close()


def test_stale_spools_go_without_opening_one(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / f"{PREFIX}{dead}").mkdir()
    (tmp_path / f"{PREFIX}{os.getpid()}").mkdir()  # this process's: never taken for another's
    remove_stale(tmp_path)
    remove_stale(tmp_path / "missing")  # nothing there: nothing to do, no error
    remove_stale(None)
    assert [p.name for p in tmp_path.iterdir()] == [f"{PREFIX}{os.getpid()}"]


def test_no_spool_where_there_is_no_directory(tmp_path: Path) -> None:
    assert Spool.open(None) is None
    assert Spool.open(tmp_path / "missing") is None
    (tmp_path / "file").write_bytes(b"")
    assert Spool.open(tmp_path / "file") is None


def test_a_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    ref = write(str(tmp_path), b"abc")
    assert ref is not None
    with pytest.raises(OSError, match="3 bytes, 4 expected"), mapped(Spooled(ref.path, 4)):
        pass
    assert not Path(ref.path).exists()


def test_rows_in_a_spool_need_no_staging_schema(tmp_path: Path) -> None:
    """Only rows staged as a database make the writer ATTACH its staging schema (a needless ATTACH and
    DETACH per transaction otherwise)."""
    from keeper.indexer.derive import Folded
    from keeper.indexer.prepare import Prepared
    from keeper.indexer.writer import _attaches

    def prepared(rows: StagedRows) -> Prepared:
        return Prepared([], Folded({}, {}), {}, staged=rows)

    ref = write(str(tmp_path), b"x")
    assert ref is not None
    assert not _attaches(prepared(StagedRows(1, spooled=ref, layout=(("events", 1),))))
    assert not _attaches(prepared(StagedRows(1, packed={"events": b"x"})))
    assert _attaches(prepared(StagedRows(1, blob=b"x")))
