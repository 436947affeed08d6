"""The keeper's signing key: loaded once, kept in memory, never logged, stored or echoed.

Production keys come from an encrypted Ethereum V3 keystore plus a password file; dev chains may pass a
key in an environment variable. A keystore readable by group or others is refused outright.

eth_account is imported where a key is loaded, not at the top: the log scrubber imports this module
(:func:`redact`) in every command, and eth_account alone takes about 0.4 s to import.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keeper.errors import KeeperError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

_HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
_REGISTERED_SECRETS: set[str] = set()


def redact(text: str) -> str:
    """Removes every loaded key (with or without 0x) from ``text``: the last line of defence for logs."""
    for secret in sorted(_REGISTERED_SECRETS, key=len, reverse=True):  # "0x…" before its bare form
        text = text.replace(secret, "[redacted]")
    return text


def _register(key_hex: str) -> None:
    bare = key_hex.lower().removeprefix("0x")
    _REGISTERED_SECRETS.update({bare, "0x" + bare, bare.upper(), "0x" + bare.upper()})


@dataclass(frozen=True)
class Signer:
    """A local signing account whose repr shows only the address."""

    address: str
    _account: LocalAccount = field(repr=False, compare=False)

    def sign_transaction(self, tx: dict[str, Any]) -> bytes:
        signed = self._account.sign_transaction(tx)
        return bytes(signed.raw_transaction)

    def __str__(self) -> str:
        return f"Signer({self.address})"


def _from_hex(key: str, source: str) -> Signer:
    key = key.strip()
    if not _HEX_KEY.match(key):
        raise KeeperError(f"{source} is not a private key (expected 64 hex digits)")
    from eth_account import Account  # not at the top: see the module docstring

    try:
        account: LocalAccount = Account.from_key(key)
    except Exception:  # noqa: BLE001 - the library's message may quote the key
        raise KeeperError(f"{source} is not a valid secp256k1 private key") from None
    _register(key)
    return Signer(account.address, account)


def load_keystore(keystore: Path, password_file: Path) -> Signer:
    """Decrypts a V3 keystore; refuses one that group or others can read."""
    if not keystore.exists():
        raise KeeperError(f"keystore not found: {keystore}")
    mode = stat.S_IMODE(keystore.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeeperError(
            f"keystore {keystore} is accessible by group or others (mode {mode:o}): run chmod 600 {keystore}"
        )
    if not password_file.exists():
        raise KeeperError(f"keystore password file not found: {password_file}")
    try:
        data = json.loads(keystore.read_text())
    except (OSError, ValueError):
        raise KeeperError(f"keystore {keystore} is not a JSON V3 keystore") from None
    password = password_file.read_text().rstrip("\r\n")
    from eth_account import Account

    try:
        key = Account.decrypt(data, password)
    except Exception:  # noqa: BLE001 - wrong password, unsupported KDF, corrupt MAC
        raise KeeperError(f"cannot decrypt keystore {keystore}: wrong password or corrupt file") from None
    return _from_hex(bytes(key).hex(), f"keystore {keystore}")


def load_signer(
    keystore: Path | None = None,
    password_file: Path | None = None,
    key_env: str = "KEEPER_PRIVATE_KEY",
) -> Signer:
    """The keeper's key: a keystore when configured, else the dev environment variable ``key_env``."""
    if keystore is not None:
        if password_file is None:
            raise KeeperError("a keystore needs a password_file")
        return load_keystore(keystore, password_file)
    value = os.environ.get(key_env)
    if value:
        return _from_hex(value, f"environment variable {key_env}")
    raise KeeperError(f"no signing key: configure a keystore, or set {key_env} on a dev chain")


def write_keystore(key_hex: str, password: str, path: Path) -> str:
    """Encrypts ``key_hex`` into a V3 keystore at ``path`` (mode 600); returns the address."""
    signer = _from_hex(key_hex, "key")
    from eth_account import Account

    data = Account.encrypt(bytes.fromhex(key_hex.removeprefix("0x")), password)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    return signer.address
