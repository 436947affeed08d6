"""Keys: loaded from a keystore or a dev variable, refused when exposed, never shown."""

import os
from pathlib import Path

import pytest

from keeper.devchain.anvil import DEV_KEYS
from keeper.errors import KeeperError
from keeper.executor.keys import load_signer, redact, write_keystore

# anvil's public dev account 3 — a well-known, worthless key.
DEV_KEY = DEV_KEYS[3]
DEV_ADDR = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"


def _keystore(tmp_path: Path, mode: int = 0o600) -> tuple[Path, Path]:
    ks, pw = tmp_path / "key.json", tmp_path / "password"
    pw.write_text("correct horse\n")
    write_keystore(DEV_KEY, "correct horse", ks)
    os.chmod(ks, mode)
    return ks, pw


def test_keystore_round_trip(tmp_path: Path) -> None:
    ks, pw = _keystore(tmp_path)
    signer = load_signer(ks, pw)
    assert signer.address == DEV_ADDR
    assert DEV_KEY[2:] not in repr(signer) and DEV_KEY[2:] not in str(signer)


def test_keystore_readable_by_others_is_refused(tmp_path: Path) -> None:
    ks, pw = _keystore(tmp_path, 0o644)
    with pytest.raises(KeeperError, match="chmod 600"):
        load_signer(ks, pw)


def test_wrong_password_is_one_clear_error(tmp_path: Path) -> None:
    ks, pw = _keystore(tmp_path)
    pw.write_text("wrong")
    with pytest.raises(KeeperError, match="wrong password") as err:
        load_signer(ks, pw)
    assert DEV_KEY[2:] not in str(err.value)


def test_env_key_and_bad_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", DEV_KEY)
    assert load_signer().address == DEV_ADDR
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", "0x1234")
    with pytest.raises(KeeperError, match="not a private key") as err:
        load_signer()
    assert "1234" not in str(err.value)
    monkeypatch.delenv("KEEPER_PRIVATE_KEY")
    with pytest.raises(KeeperError, match="no signing key"):
        load_signer()


def test_redact_scrubs_a_loaded_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEPER_PRIVATE_KEY", DEV_KEY)
    load_signer()
    line = f"sending with {DEV_KEY} and {DEV_KEY[2:].upper()}"
    assert "[redacted]" in redact(line) and DEV_KEY[2:] not in redact(line).lower()
