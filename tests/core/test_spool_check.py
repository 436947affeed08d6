"""`keeper config check` on indexer.spool_dir: a tmpfs with room passes; anything else is a warning that
says what happens (the decode workers use pipes, or the files may reach a disk), never an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from keeper import preflight
from keeper.config import Settings
from keeper.preflight import Report, check_spool


def _check(spool_dir: str) -> Report:
    settings = Settings.model_validate({"indexer": {"spool_dir": spool_dir}})
    report = Report()
    check_spool(settings, report)
    return report


def test_dev_shm_is_a_tmpfs_with_room() -> None:
    assert preflight._filesystem(Path("/dev/shm")) == "tmpfs"
    report = _check("/dev/shm")
    assert report.warnings == [] and len(report.ok) == 1
    assert report.ok[0].startswith("indexer.spool_dir /dev/shm: tmpfs, ") and report.ok[0].endswith("MB free")


def test_a_directory_on_disk_is_a_warning(tmp_path: Path) -> None:
    disk = Path(__file__).resolve().parent  # the checkout: on a disk, not a tmpfs
    kind = preflight._filesystem(disk)
    assert kind is not None and kind != "tmpfs"
    report = _check(str(disk))
    assert report.ok == []
    assert f"is on {kind}, not a tmpfs: spool files may reach the disk" in report.warnings[0]


def test_too_little_room_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "SPOOL_ROOM_BYTES", 1 << 60)
    report = _check("/dev/shm")
    assert report.ok == [] and len(report.warnings) == 1
    assert "MB free: answers that do not fit go through pipes" in report.warnings[-1]


def test_a_missing_directory_and_an_empty_setting(tmp_path: Path) -> None:
    missing = _check(str(tmp_path / "missing"))
    assert missing.ok == []
    assert "is not a writable directory: decode workers will use pipes" in missing.warnings[0]
    empty = _check("")
    assert empty.warnings == [] and "through pipes" in empty.ok[0]
