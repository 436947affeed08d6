"""Pre-flight checks: everything the keeper needs, verified before it starts, without writing anything.

``keeper config check`` runs them and prints a checklist; the runtime calls :func:`preflight` at
start-up. The first problem found is raised as one :class:`~keeper.errors.KeeperError` line (exit 2):

* the config: the file readable, valid TOML, no unknown key (also in ``KEEPER_<SECTION>__<KEY>``
  overrides), every value valid (:func:`load_checked_settings`);
* the deployments file: present and well-formed, for the configured chain;
* the chain: every RPC URL answers, with the deployment's chain id;
* the contracts: code at every address of the deployments file (contracts and price feeds), and each
  contract with an ABI in ``abis/`` matches its deployed code (every function selector of the ABI is
  pushed by the bytecode's dispatcher);
* the database: reachable, its schema revision the code's (Alembic head), or older when
  ``database.auto_migrate`` is on; leader election usable (PostgreSQL 14+);
* the decode workers' spool (``indexer.spool_dir``): a writable tmpfs with room, else a warning (the
  workers then use pipes, at some CPU);
* the key (``need_key``): loadable (keystore + password file, not readable by others; or the dev
  environment variable), with a warning when its account holds no ETH.

Nothing is written: SQLite is opened read-only (a missing file is not created), Alembic's version is
read but no migration runs.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from keeper.errors import KeeperError

if TYPE_CHECKING:
    from web3 import Web3

    from keeper.chain.deployments import Deployment
    from keeper.config import Settings

__all__ = ["Report", "config_path", "load_checked_settings", "preflight", "selectors_in_code"]

#: PostgreSQL's ``idle_session_timeout`` (leader election) appeared in version 14.
MIN_PG_VERSION = 140000


@dataclass
class Report:
    """What was verified (``ok``) and what deserves a look but does not stop the keeper (``warnings``)."""

    ok: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"✓ {line}" for line in self.ok] + [f"! {line}" for line in self.warnings]


# ------------------------------------------------------------------------------------------ config


def config_path(explicit: str | Path | None = None) -> tuple[Path, bool]:
    """The config file in effect and whether it was named explicitly (``--config``/``KEEPER_CONFIG``)."""
    from keeper.config import DEFAULT_CONFIG

    if explicit is not None:
        return Path(explicit), True
    env = os.environ.get("KEEPER_CONFIG")
    return (Path(env), True) if env else (DEFAULT_CONFIG, False)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``X``, ``X | None``, ``list[X]`` (else None: a leaf value)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            m = _model_of(arg)
            if m is not None:
                return m
    return None


def unknown_keys(data: Any, model: type[BaseModel], prefix: str = "") -> Iterable[tuple[str, list[str]]]:
    """(dotted key, known keys at that level) for every key of ``data`` that ``model`` lacks."""
    if isinstance(data, list):
        for i, item in enumerate(data):
            yield from unknown_keys(item, model, f"{prefix}[{i}]")
        return
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            yield where, list(fields)
            continue
        sub = _model_of(fields[key].annotation)
        if sub is not None:
            yield from unknown_keys(value, sub, where)


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_env_keys(settings_cls: type[BaseModel]) -> None:
    """``KEEPER_<SECTION>__<KEY>`` naming a key that does not exist is an error, not silently ignored."""
    sections = settings_cls.model_fields
    for name in sorted(os.environ):
        if not name.startswith("KEEPER_") or "__" not in name:
            continue
        parts = name[len("KEEPER_") :].lower().split("__")
        if parts[0] not in sections:
            continue  # not a settings override (e.g. a test variable)
        model: type[BaseModel] | None = _model_of(sections[parts[0]].annotation)
        for i, part in enumerate(parts[1:], start=1):
            if model is None:
                break
            if part not in model.model_fields:
                known = list(model.model_fields)
                raise KeeperError(
                    f"unknown config key {'.'.join(parts[: i + 1])} in environment variable {name}"
                    f"{_suggest(part, known)}"
                )
            model = _model_of(model.model_fields[part].annotation)


def load_checked_settings(explicit: str | Path | None = None) -> tuple[Settings, Path | None]:
    """Settings, after checking the file itself: readable, TOML, no unknown key; one line otherwise.

    Returns the settings and the config file read (None when the default file does not exist).
    """
    from keeper.config import Settings, load_settings

    path, named = config_path(explicit)
    if not path.exists():
        if named:
            raise KeeperError(f"config file not found: {path}")
        _check_env_keys(Settings)
        return load_settings(), None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KeeperError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise KeeperError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise KeeperError(f"config file {path} is not valid TOML: {exc}") from None
    for where, known in unknown_keys(data, Settings):
        raise KeeperError(f"unknown config key {where} in {path}{_suggest(where, known)}")
    _check_env_keys(Settings)
    return load_settings(path), path


# ------------------------------------------------------------------------------------------ chain


def selectors_in_code(code: bytes) -> set[int]:
    """Every constant of 1 to 4 bytes the bytecode pushes (PUSH1..PUSH4): the dispatcher's selectors
    among them (a selector with leading zero bytes may be pushed shorter)."""
    out: set[int] = set()
    i, n = 0, len(code)
    while i < n:
        op = code[i]
        if 0x60 <= op <= 0x7F:  # PUSH1..PUSH32
            size = op - 0x5F
            if size <= 4:
                out.add(int.from_bytes(code[i + 1 : i + 1 + size], "big"))
            i += 1 + size
        else:
            i += 1
    return out


def abi_mismatch(abi: list[dict[str, Any]], code: bytes) -> tuple[int, int, list[str]]:
    """(functions in the ABI, how many are missing from ``code``, a few missing signatures)."""
    from eth_utils import function_signature_to_4byte_selector

    def canonical(t: dict[str, Any]) -> str:
        typ = str(t["type"])
        if typ.startswith("tuple"):
            return "(" + ",".join(canonical(c) for c in t.get("components", [])) + ")" + typ[len("tuple") :]
        return typ

    pushed = selectors_in_code(code)
    functions = [e for e in abi if e.get("type") == "function"]
    missing = []
    for fn in functions:
        sig = f"{fn['name']}({','.join(canonical(i) for i in fn.get('inputs', []))})"
        if int.from_bytes(function_signature_to_4byte_selector(sig), "big") not in pushed:
            missing.append(sig)
    return len(functions), len(missing), missing[:3]


def _get_code(w3: Web3, address: str, name: str) -> bytes:
    from eth_utils import to_checksum_address

    from keeper.chain.connect import describe_rpc_error, rpc_url

    try:
        code = bytes(w3.eth.get_code(to_checksum_address(address)))
    except Exception as exc:  # noqa: BLE001
        raise KeeperError(f"cannot reach RPC {rpc_url(w3)}: {describe_rpc_error(exc)}") from None
    if not code:
        raise KeeperError(
            f"no contract code for {name} at {address}: is the deployments file for this chain?"
        )
    return code


def check_chain(settings: Settings, report: Report) -> tuple[Web3, Deployment]:
    from keeper.chain.artifacts import ABI_DIR, load_abi
    from keeper.chain.connect import connect
    from keeper.chain.deployments import Deployment, default_path

    dep_path = default_path(settings.chain.deployments_file)
    deployment = Deployment.load(dep_path)
    if settings.chain.chain_id is not None and settings.chain.chain_id != deployment.chain_id:
        raise KeeperError(
            f"chain.chain_id is {settings.chain.chain_id} but the deployments file {dep_path} is for "
            f"chain {deployment.chain_id}"
        )
    report.ok.append(
        f"deployments file {dep_path}: chain {deployment.chain_id}, {len(deployment.contracts)} contracts, "
        f"{len(deployment.markets)} markets"
    )
    w3: Web3 | None = None
    for url in settings.chain.rpc_urls:
        try:
            node = connect(url, deployment.chain_id, settings.chain.request_timeout)
        except KeeperError as exc:
            if "serves chain" in str(exc):
                raise KeeperError(f"{exc} (the deployment's chain, from {dep_path})") from None
            raise
        w3 = w3 or node
        report.ok.append(f"RPC {_mask_url(url)} answers, chain {deployment.chain_id}")
    assert w3 is not None
    codes = {name: _get_code(w3, addr, name) for name, addr in deployment.contracts.items()}
    feeds = 0
    for m in deployment.markets:
        for role, addr in (("primary", m.primary), ("secondary", m.secondary)):
            _get_code(w3, addr, f"the {m.symbol} {role} price feed")
            feeds += 1
    report.ok.append(f"contract code at all {len(codes)} contract and {feeds} price feed addresses")
    matched = []
    for name, code in codes.items():
        if not (ABI_DIR / f"{name}.json").is_file():
            continue
        total, missing, examples = abi_mismatch(load_abi(name), code)
        if missing:
            raise KeeperError(
                f"{name} at {deployment.contracts[name]} does not match abis/{name}.json: {missing} of "
                f"{total} functions are not in its code (e.g. {examples[0]}): wrong address in the "
                "deployments file, or an outdated ABI (make abis)"
            )
        matched.append(name)
    report.ok.append(f"ABIs match the deployed code: {', '.join(matched) or 'none to compare'}")
    return w3, deployment


# ------------------------------------------------------------------------------------------ database


def check_database(settings: Settings, report: Report) -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    from keeper.store.engine import normalize_url, redact
    from keeper.store.migrate import alembic_config, head_revision

    url = settings.database.url
    shown = redact(url)
    try:
        u = make_url(normalize_url(url))
    except ArgumentError:
        raise KeeperError(f"invalid database.url {shown}: use sqlite:///path or postgresql://...") from None
    backend = u.get_backend_name()
    rev: str | None
    pg_version = 0
    if backend == "sqlite":
        db = u.database or ""
        if not db or db == ":memory:":
            raise KeeperError("database.url is an in-memory SQLite database: the index would not persist")
        path = Path(db)
        if not path.exists():
            rev = None
        else:
            # Read-only. Without a -wal file the main file is complete: immutable=1 then opens it with
            # no -wal/-shm created (mode=ro alone creates them for a WAL database).
            wal = Path(f"{path}-wal").exists()
            flags = "mode=ro" if wal else "mode=ro&immutable=1"
            engine = create_engine(f"sqlite:///file:{path.resolve()}?{flags}&uri=true", poolclass=NullPool)
            try:
                with engine.connect() as conn:
                    rev = MigrationContext.configure(conn).get_current_revision()
            except SQLAlchemyError as exc:
                raise KeeperError(f"cannot read the database {shown}: {_short(exc)}") from None
            finally:
                engine.dispose()
    elif backend == "postgresql":
        if u.get_driver_name() != "psycopg":
            raise KeeperError(f"unsupported PostgreSQL driver {u.get_driver_name()!r}: use postgresql://")
        engine = create_engine(
            u,
            poolclass=NullPool,
            connect_args={"connect_timeout": 5},
            execution_options={"postgresql_readonly": True},
        )
        try:
            with engine.connect() as conn:
                pg_version = int(conn.exec_driver_sql("SHOW server_version_num").scalar_one())
                rev = MigrationContext.configure(conn).get_current_revision()
        except SQLAlchemyError as exc:
            raise KeeperError(f"database unreachable: {shown}: {_short(exc)}") from None
        finally:
            engine.dispose()
    else:
        raise KeeperError(f"unsupported database {backend!r} in database.url: use sqlite or postgresql")
    report.ok.append(f"database {shown} reachable")

    head = head_revision()
    known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if rev == head:
        report.ok.append(f"database schema at the code's revision {head}")
    elif rev is not None and rev not in known:
        raise KeeperError(
            f"database schema is at revision {rev}, unknown to this keeper (written by a newer version?)"
        )
    elif settings.database.auto_migrate:
        report.ok.append(
            f"database schema at {rev or 'none (empty)'}: will be upgraded to {head} at start "
            "(database.auto_migrate)"
        )
    else:
        raise KeeperError(
            f"database schema is {'empty' if rev is None else f'at revision {rev}'}, older than the code's "
            f"{head}: run keeper db upgrade"
        )

    if backend == "sqlite" or not settings.leader.enabled:
        report.ok.append("leader election: single node (SQLite or leader.enabled = false), always the leader")
    elif pg_version < MIN_PG_VERSION:
        raise KeeperError(
            f"leader election needs PostgreSQL 14 or later (idle_session_timeout), the server is "
            f"{pg_version // 10000}: upgrade it, or set leader.enabled = false for a single node"
        )
    else:
        report.ok.append(f"leader election: PostgreSQL {pg_version // 10000} advisory lock")


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    if "Connection refused" in text or "connection refused" in text:
        return "connection refused"
    return " ".join(text.split())[:200]


# ------------------------------------------------------------------------------------------ key


def check_key(settings: Settings, report: Report, w3: Web3 | None) -> None:
    from eth_utils import to_checksum_address

    from keeper.executor.keys import load_signer

    ex = settings.executor
    signer = load_signer(ex.keystore, ex.password_file, ex.key_env)
    source = f"keystore {ex.keystore}" if ex.keystore is not None else f"environment variable {ex.key_env}"
    report.ok.append(f"signing key {signer.address} loaded from {source}")
    if w3 is not None:
        try:
            balance = int(w3.eth.get_balance(to_checksum_address(signer.address)))
        except Exception:  # noqa: BLE001 - a balance is informative only
            return
        if balance == 0:
            report.warnings.append(f"{signer.address} holds no ETH: it cannot pay for gas")


# ------------------------------------------------------------------------------------------ all


#: below this much free room in the spool, a dense chain's answers go through the pipes
SPOOL_ROOM_BYTES = 128 << 20


def check_spool(settings: Settings, report: Report) -> None:
    """indexer.spool_dir (:mod:`keeper.indexer.spool`): usable, in memory, with room; never fatal (the
    decode workers fall back to pipes, at some CPU)."""
    root = settings.indexer.spool_dir
    if not root:
        report.ok.append("indexer.spool_dir empty: decode workers get their data through pipes")
        return
    path = Path(root)
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        report.warnings.append(
            f"indexer.spool_dir {root} is not a writable directory: decode workers will use pipes "
            "(more CPU during a backfill)"
        )
        return
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    kind = _filesystem(path)
    if kind != "tmpfs":
        report.warnings.append(
            f"indexer.spool_dir {root} is on {kind or 'an unknown filesystem'}, not a tmpfs: spool files "
            "may reach the disk"
        )
    if free < SPOOL_ROOM_BYTES:
        report.warnings.append(
            f"indexer.spool_dir {root} has {free >> 20} MB free: answers that do not fit go through pipes "
            f"(give it {SPOOL_ROOM_BYTES >> 20} MB or more, e.g. docker --shm-size=256m)"
        )
    if kind == "tmpfs" and free >= SPOOL_ROOM_BYTES:
        report.ok.append(f"indexer.spool_dir {root}: tmpfs, {free >> 20} MB free")


def _filesystem(path: Path) -> str | None:
    """The type of the filesystem ``path`` is on, from /proc/mounts (None when unknown)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    best, kind = -1, None
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), parts[2]
    return kind


def preflight(settings: Settings, *, need_key: bool = True, check_db: bool = True) -> Report:
    """Runs every check (see the module docstring); KeeperError on the first problem."""
    report = Report()
    w3, _ = check_chain(settings, report)
    if check_db:
        check_database(settings, report)
    check_spool(settings, report)
    if need_key:
        check_key(settings, report, w3)
    return report


def _mask_url(url: str) -> str:
    """A URL for display: password and anything after the host (often an API key) hidden."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.username:
        host = f"{parts.username}{':***' if parts.password else ''}@{host}"
    rest = "/***" if (parts.path not in ("", "/") or parts.query) else parts.path
    return f"{parts.scheme}://{host}{rest}"


mask_url = _mask_url
