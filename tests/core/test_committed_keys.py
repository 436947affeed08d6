"""No real private key is committed: every 64-hex-digit literal in the project's code, config, scripts and
docs is one of anvil's public development keys (derived here from anvil's published mnemonic)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from eth_account import Account

from keeper.devchain.anvil import DEV_KEYS

ROOT = Path(__file__).resolve().parents[2]
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"  # anvil's public default
LITERAL = re.compile(r"0x([0-9a-fA-F]{64})(?![0-9a-fA-F])")
SCANNED = ("keeper", "config", "scripts", "docker", "bench", "tests", "README.md", "docs")


def _anvil_keys(n: int = 10) -> set[str]:
    Account.enable_unaudited_hdwallet_features()
    return {
        Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key.hex().removeprefix("0x")
        for i in range(n)
    }


def test_dev_keys_are_anvils_public_accounts() -> None:
    assert {k[2:] for k in DEV_KEYS} <= _anvil_keys(len(DEV_KEYS))


def test_every_committed_64_hex_literal_is_an_anvil_dev_key() -> None:
    files = subprocess.run(["git", "ls-files", "--", *SCANNED], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    assert len(files) > 100, "the scan found too few files to mean anything"
    allowed = _anvil_keys()
    found = {}
    for name in files:
        path = ROOT / name
        if path.suffix not in {".py", ".toml", ".sh", ".yaml", ".yml", ".md", ".json", ".env"}:
            continue
        for m in LITERAL.finditer(path.read_text(errors="replace")):
            found.setdefault(m.group(1).lower(), name)
    assert found, "no dev key found at all: the scan is broken"
    unknown = {k[:8] + "…": where for k, where in found.items() if k not in allowed}
    assert not unknown, f"64-hex literals that are not anvil dev keys (a real key or a hash?): {unknown}"
