"""Configuration: check it (config, chain, contracts, database, key) or show the effective settings.

keeper config check [--config PATH] [--no-key] [--no-db]   pre-flight checks, a ✓ line each
keeper config show [--config PATH] [--json]                 the effective config, secrets masked
keeper config example                                        every key documented (config/example.toml)
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

SECRET_NAMES = re.compile(r"(^|_)(key|password|secret|token|salt)$")
HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
MASK = "***"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="<action>", required=True)
    check = sub.add_parser("check", help="verify config, chain, contracts, database and key; write nothing")
    check.add_argument(
        "--config", type=Path, metavar="PATH", help="TOML config file (default: KEEPER_CONFIG)"
    )
    check.add_argument("--no-key", action="store_true", help="skip the signing key (a node that only serves)")
    check.add_argument("--no-db", action="store_true", help="skip the database")
    show = sub.add_parser(
        "show", help="print the effective config (file + KEEPER_* overrides), secrets masked"
    )
    show.add_argument("--config", type=Path, metavar="PATH", help="TOML config file (default: KEEPER_CONFIG)")
    show.add_argument("--json", action="store_true", help="JSON instead of TOML")
    sub.add_parser("example", help="print a config file documenting every key, its default and env name")


def run(args: argparse.Namespace) -> int:
    if args.config_command == "example":
        sys.stdout.write(example_toml())
        return 0
    from keeper.preflight import load_checked_settings, preflight

    settings, path = load_checked_settings(args.config)
    if args.config_command == "show":
        data = mask_secrets(settings.model_dump(mode="json"))
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            print(
                f"# effective config: {path or 'defaults (no config file)'} + KEEPER_* environment overrides"
            )
            sys.stdout.write(to_toml(data))
        return 0
    report = preflight(settings, need_key=not args.no_key, check_db=not args.no_db)
    print(f"✓ config {path or 'defaults (no config file)'}: valid")
    for line in report.lines():
        print(line)
    return 0


# ------------------------------------------------------------------------------------------ masking


def mask_secrets(data: Any, key: str = "", path: str = "") -> Any:
    """The settings dump with keys, passwords, tokens and credentials in URLs replaced by ``***``."""
    from keeper.preflight import mask_url
    from keeper.store.engine import redact

    if isinstance(data, dict):
        return {k: mask_secrets(v, k, f"{path}.{k}" if path else k) for k, v in data.items()}
    if isinstance(data, list):
        return [mask_secrets(v, key, path) for v in data]
    if not isinstance(data, str):
        return data
    if SECRET_NAMES.search(key) or HEX_KEY.match(data.strip()):
        return MASK
    if path == "database.url" or path == "executor.journal_url":
        return redact(data)
    if "://" in data and key in ("url", "rpc_urls", "ws_url"):
        return mask_url(data)
    return data


# ------------------------------------------------------------------------------------------ TOML out


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML for {type(v).__name__}")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """A TOML document for a settings dump (None values as comments: TOML has no null)."""
    out: list[str] = []
    tables: list[tuple[str, Any]] = []
    for k, v in data.items():
        is_table = isinstance(v, dict) and prefix == ""
        if is_table or (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            tables.append((k, v))
        elif v is None:
            out.append(f"# {_toml_key(k)} = (unset)")
        else:
            out.append(f"{_toml_key(k)} = {toml_value(v)}")
    text = "\n".join(out) + ("\n" if out else "")
    for k, v in tables:
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, list):
            for item in v:
                text += f"\n[[{name}]]\n" + to_toml(item, name)
        else:
            text += f"\n[{name}]\n" + to_toml(v, name)
    return text


# ------------------------------------------------------------------------------------------ example


def _field_comments(cls: type) -> dict[str, list[str]]:
    """``#:`` comment lines above each field of ``cls`` and its inline ``# ...`` comment."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out: dict[str, list[str]] = {}
    pending: list[str] = []
    for line in lines[1:]:
        s = line.strip()
        if s.startswith("#:"):
            pending.append(s[2:].strip())
            continue
        m = re.match(r"^    (\w+)\s*:", line)
        if m and not line.startswith("     "):
            notes = list(pending)
            inline = re.search(r"\)\s+#\s*(.+)$|[^\"']\s+#\s*(.+)$", line)
            if inline:
                notes.append((inline.group(1) or inline.group(2)).strip())
            out[m.group(1)] = notes
        pending = []
    return out


def _doc(cls: type) -> list[str]:
    doc = inspect.getdoc(cls) or ""
    if not doc or doc == inspect.getdoc(cls.__mro__[1]):
        return []
    return [" ".join(p.split()) for p in doc.split("\n\n")]


def _display_default(v: Any) -> Any:
    from keeper.config import REPO_ROOT

    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str) and str(REPO_ROOT) in v:
        v = v.replace(str(REPO_ROOT) + "/", "")
    if isinstance(v, list | tuple):
        return [_display_default(x) for x in v]
    if isinstance(v, dict):
        return {k: _display_default(x) for k, x in v.items()}
    return v


def _placeholder(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "")
    if "Path" in text:
        return '"/path/to/file"'
    if "int" in text:
        return "0"
    if "float" in text:
        return "0.0"
    if "list" in text:
        return "[]"
    return '"..."'


def _example_section(model: type, name: str, env: str, commented: bool, array: bool) -> list[str]:
    from pydantic import BaseModel

    from keeper.config import REPO_ROOT
    from keeper.preflight import _model_of

    assert issubclass(model, BaseModel)
    c = "# " if commented else ""
    out = [""]
    for para in _doc(model):
        out += [f"# {line}" for line in textwrap.wrap(para, 100)]
    out.append(f"{c}[[{name}]]" if array else f"{c}[{name}]")
    notes = _field_comments(model)
    for key, f in model.model_fields.items():
        sub = _model_of(f.annotation)
        env_name = f"{env}__{key.upper()}"
        if sub is not None:
            continue
        for n in notes.get(key, []):
            out.append(f"# {n}")
        if f.is_required():
            out.append(f"# (required) env {env_name}" if not array else "# (required)")
            out.append(f"{c}{key} = {_placeholder(f.annotation)}")
            continue
        raw = f.get_default(call_default_factory=True)
        default = _display_default(raw)
        where = f"env {env_name}" if not array else "per entry"
        if isinstance(raw, str) and str(REPO_ROOT) in raw:  # depends on where the keeper is installed
            shown = raw.replace(str(REPO_ROOT), "<checkout>")
            out.append(f"# default: {toml_value(shown)} (the keeper's checkout); {where}")
            out.append(f"# {key} = {toml_value(shown)}")
        elif default is None:
            out.append(f"# default: unset; {where}")
            out.append(f"# {key} = {_placeholder(f.annotation)}")
        else:
            out.append(f"# default: {toml_value(default)}; {where}")
            out.append(f"{c}{key} = {toml_value(default)}")
    for key, f in model.model_fields.items():
        sub = _model_of(f.annotation)
        if sub is None:
            continue
        is_list = typing.get_origin(f.annotation) is list
        default = f.get_default(call_default_factory=True)
        inner_commented = commented or default is None or is_list
        out.append("")
        if is_list:
            out.append(
                f"# {name}.{key}: a list of tables, [[{name}.{key}]] each (env {env}__{key.upper()} as JSON)"
            )
        elif default is None:
            out.append(f"# {name}.{key}: optional, unset by default (env {env}__{key.upper()}__<KEY>)")
        out += _example_section(sub, f"{name}.{key}", f"{env}__{key.upper()}", inner_commented, is_list)[1:]
    return out


def example_toml() -> str:
    """config/example.toml: every key with its documentation, default and environment override."""
    from keeper.config import Settings
    from keeper.preflight import _model_of

    out = [
        "# Zanbara Keeper: every configuration key, its default and its environment override.",
        "# Generated by `keeper config example > config/example.toml`: edit keeper/config.py, not this file.",
        "#",
        "# The file is named by --config or KEEPER_CONFIG (default: config/dev.toml). Any key is overridden",
        "# by the environment: KEEPER_<SECTION>__<KEY> (lists and tables as JSON, e.g.",
        "# KEEPER_CHAIN__RPC_URLS='[\"https://...\"]'). Unknown keys are errors (`keeper config check`).",
        "# Relative paths (deployments_file) are relative to the keeper's checkout. Never put a secret",
        "# (a private key, a password) in this file: use executor.keystore + executor.password_file.",
    ]
    for key, f in Settings.model_fields.items():
        sub = _model_of(f.annotation)
        assert sub is not None, key
        out += _example_section(sub, key, f"KEEPER_{key.upper()}", False, False)
    return "\n".join(out) + "\n"
