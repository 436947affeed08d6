"""Contract ABIs (``abis/<Name>.json``, exported by ``make abis``) and bytecode (forge's artifacts).

The ABI is read from the committed ``abis/`` directory, so that the keeper runs without a contracts
build; if it is missing there, forge's artifact ``contracts/out/<Name>.sol/<Name>.json`` is used.
Bytecode (for deployment only) always comes from forge's artifact.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from keeper.errors import KeeperError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
ABI_DIR = REPO_ROOT / "abis"
OUT_DIR = REPO_ROOT / "contracts" / "out"

#: Where a contract's source file differs from its name (forge names the folder after the file).
_SOURCE_FILE: dict[str, str] = {}


def artifact_path(name: str, out_dir: Path = OUT_DIR) -> Path:
    return out_dir / f"{_SOURCE_FILE.get(name, name)}.sol" / f"{name}.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeeperError(f"cannot read {path}: {exc}") from None


@lru_cache(maxsize=64)
def load_abi(name: str, abi_dir: Path = ABI_DIR, out_dir: Path = OUT_DIR) -> list[dict[str, Any]]:
    """The ABI of contract ``name`` as a JSON list."""
    path = abi_dir / f"{name}.json"
    if path.is_file():
        abi = _read_json(path)
    else:
        art = artifact_path(name, out_dir)
        if not art.is_file():
            raise KeeperError(
                f"no ABI for {name}: neither {path} nor {art} exists: run make build (and make abis)"
            )
        abi = _read_json(art).get("abi")
    if not isinstance(abi, list):
        raise KeeperError(f"ABI of {name} is not a JSON list (in {path}): run make abis")
    return abi


@lru_cache(maxsize=64)
def load_bytecode(name: str, out_dir: Path = OUT_DIR) -> bytes:
    """Creation bytecode of ``name`` from forge's artifact; KeeperError if the contracts are not built."""
    art = artifact_path(name, out_dir)
    if not art.is_file():
        raise KeeperError(f"contracts not built: {art} is missing: run make build")
    data = _read_json(art)
    code = (data.get("bytecode") or {}).get("object", "")
    if not isinstance(code, str) or len(code.removeprefix("0x")) == 0:
        raise KeeperError(f"contracts not built: {art} has no bytecode: run make build")
    if "__$" in code:
        raise KeeperError(f"{name} needs library linking, which the dev deployer does not do ({art})")
    return bytes.fromhex(code.removeprefix("0x"))


def load_artifact(name: str, out_dir: Path = OUT_DIR) -> tuple[list[dict[str, Any]], bytes]:
    """(abi, creation bytecode) for deployment: both from the build, so they always match."""
    code = load_bytecode(name, out_dir)
    abi = _read_json(artifact_path(name, out_dir)).get("abi")
    if not isinstance(abi, list):
        raise KeeperError(f"contracts not built: {artifact_path(name, out_dir)} has no ABI: run make build")
    return abi, code
