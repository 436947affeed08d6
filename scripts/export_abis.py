#!/usr/bin/env python3
"""Export the ABI of every contract in contracts/src into abis/<ContractName>.json.

Contracts are found by scanning contracts/src/**/*.sol for ``contract X`` declarations (interfaces,
libraries and abstract contracts are skipped); each ABI is read from forge's artifact
contracts/out/<File>.sol/<X>.json (run ``make build`` first) and written pretty-printed with sorted keys.

``--check`` writes nothing: it exits 1, naming the files, if abis/ differs from what the build produces
(missing, stale or extra files).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "contracts" / "src"
OUT = ROOT / "contracts" / "out"
ABIS = ROOT / "abis"

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_STRING = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'')
# `contract X` at the start of a statement; `abstract contract X`, `interface X`, `library X` don't match.
_CONTRACT = re.compile(r"(?:^|[;}])\s*contract\s+([A-Za-z_$][\w$]*)", re.M)


def find_contracts(src: Path = SRC) -> dict[str, Path]:
    """Contract name -> source file, for every concrete contract declared under ``src``."""
    found: dict[str, Path] = {}
    for sol in sorted(src.rglob("*.sol")):
        text = _STRING.sub('""', _COMMENT.sub(" ", sol.read_text(encoding="utf-8")))
        for name in _CONTRACT.findall(text):
            if name in found:
                sys.exit(f"export_abis: contract {name} is declared in both {found[name]} and {sol}")
            found[name] = sol
    return found


def render(name: str, source: Path, out: Path = OUT) -> str:
    artifact = out / source.name / f"{name}.json"
    if not artifact.is_file():
        sys.exit(f"export_abis: {artifact.relative_to(ROOT)} not found: run `make build` first")
    abi = json.loads(artifact.read_text(encoding="utf-8"))["abi"]
    return json.dumps(abi, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if abis/ is not up to date")
    args = parser.parse_args(argv)

    contracts = find_contracts()
    if not contracts:
        sys.exit(f"export_abis: no contracts found under {SRC.relative_to(ROOT)}")
    wanted = {f"{name}.json": render(name, src) for name, src in contracts.items()}
    present = {p.name for p in ABIS.glob("*.json")} if ABIS.is_dir() else set()

    if args.check:
        problems = []
        for fname, text in sorted(wanted.items()):
            path = ABIS / fname
            if not path.is_file():
                problems.append(f"missing  abis/{fname}")
            elif path.read_text(encoding="utf-8") != text:
                problems.append(f"outdated abis/{fname}")
        problems += [f"extra    abis/{fname}" for fname in sorted(present - wanted.keys())]
        if problems:
            print("abis/ does not match the contracts build:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            print("run `make abis` and commit abis/", file=sys.stderr)
            return 1
        print(f"abis/ up to date ({len(wanted)} contracts)")
        return 0

    ABIS.mkdir(exist_ok=True)
    for fname, text in sorted(wanted.items()):
        path = ABIS / fname
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote abis/{fname}")
    for fname in sorted(present - wanted.keys()):
        (ABIS / fname).unlink()
        print(f"removed stale abis/{fname}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
