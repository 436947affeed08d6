"""Keeper configuration: one TOML file, overridden by ``KEEPER_*`` environment variables.

Sections mirror the pipeline (chain → indexer → store → risk → executor → server). Nested keys are
overridden with a double underscore: ``KEEPER_CHAIN__RPC_URLS='["http://..."]'``,
``KEEPER_DATABASE__URL=postgresql://...``. ``KEEPER_CONFIG`` names the TOML file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from keeper.errors import KeeperError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "dev.toml"


class ChainSettings(BaseModel):
    """Where the chain is and which deployment on it the keeper serves."""

    rpc_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8545"], min_length=1)
    ws_url: str | None = None
    chain_id: int | None = None
    deployments_file: Path = REPO_ROOT / "config" / "deployments" / "local.json"
    request_timeout: float = Field(default=10.0, gt=0)


class DatabaseSettings(BaseModel):
    """SQLite by default (embedded); any SQLAlchemy URL, e.g. postgresql+psycopg://..., for scale."""

    url: str = f"sqlite:///{REPO_ROOT / 'var' / 'keeper.db'}"


class IndexerSettings(BaseModel):
    confirmations: int = Field(default=0, ge=0)
    reorg_window: int = Field(default=128, ge=1)
    poll_interval: float = Field(default=1.0, gt=0)
    initial_range: int = Field(default=2_000, ge=1)
    min_range: int = Field(default=1, ge=1)
    max_range: int = Field(default=100_000, ge=1)


class DevSettings(BaseModel):
    """Dev-chain only: anvil's public, well-known keys. Never put a real key in a file."""

    deployer_key: str | None = None
    risk_admin_key: str | None = None
    guardian_key: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEEPER_", env_nested_delimiter="__", extra="forbid")

    chain: ChainSettings = Field(default_factory=ChainSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    indexer: IndexerSettings = Field(default_factory=IndexerSettings)
    dev: DevSettings = Field(default_factory=DevSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("KEEPER_CONFIG", DEFAULT_CONFIG))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.exists():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def load_settings(config_path: str | Path | None = None, **overrides: Any) -> Settings:
    """Loads and validates settings; a bad file or value is one KeeperError line, not a traceback."""
    if config_path is not None:
        path = Path(config_path)
        if not path.exists():
            raise KeeperError(f"config file not found: {path}")
        os.environ["KEEPER_CONFIG"] = str(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise KeeperError(f"invalid config {where}: {first['msg']}") from None
    except ValueError as exc:  # malformed TOML
        raise KeeperError(f"invalid config file: {exc}") from None
