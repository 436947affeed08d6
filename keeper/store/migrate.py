"""Schema migrations (Alembic, packaged in keeper/store/migrations): upgrade and current revision."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from keeper.errors import KeeperError
from keeper.store.engine import redact

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

__all__ = ["alembic_config", "current_revision", "head_revision", "upgrade"]


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Brings the schema to ``revision`` (idempotent)."""
    cfg = alembic_config()
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except OperationalError as exc:
        raise KeeperError(f"cannot migrate {redact(str(engine.url))}: {exc.orig}") from None


def current_revision(engine: Engine) -> str | None:
    """The schema revision of the database (None when it has never been migrated)."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise KeeperError(f"cannot read {redact(str(engine.url))}: {exc.orig}") from None
