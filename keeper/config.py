"""Keeper configuration: one TOML file, overridden by ``KEEPER_*`` environment variables.

Sections mirror the pipeline (chain → indexer → store → risk → executor → server). Nested keys are
overridden with a double underscore: ``KEEPER_CHAIN__RPC_URLS='["http://..."]'``,
``KEEPER_DATABASE__URL=postgresql://...``. ``KEEPER_CONFIG`` names the TOML file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

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
    #: SQLite: how long a writer waits for a lock before failing (ms).
    busy_timeout_ms: int = Field(default=10_000, ge=0)
    #: ``keeper index`` brings the schema to the latest migration at start (else: ``keeper db upgrade``).
    auto_migrate: bool = True
    echo: bool = False


class IndexerSettings(BaseModel):
    confirmations: int = Field(default=0, ge=0)
    reorg_window: int = Field(default=128, ge=1)
    poll_interval: float = Field(default=1.0, gt=0)
    initial_range: int = Field(default=2_000, ge=1)
    min_range: int = Field(default=1, ge=1)
    max_range: int = Field(default=100_000, ge=1)
    #: First block of a fresh index (default: the deployments file's deployment_block).
    start_block: int | None = Field(default=None, ge=0)
    #: Decoded ranges queued for the writer at least (the queue also holds the ranges the writer joins
    #: into one transaction); more only adds memory.
    pipeline_depth: int = Field(default=1, ge=1)
    #: eth_getLogs ranges grow while their answers stay below this many logs.
    target_logs: int = Field(default=5_000, ge=1)
    #: eth_getLogs queries in flight at once during a catch-up (their answers are decoded as they come).
    fetch_concurrency: int = Field(default=3, ge=1)
    #: Processes that parse and decode log answers during a backfill (0: a thread of the keeper).
    decode_workers: int = Field(default=2, ge=0)
    #: A catch-up of at least this many blocks uses the decode workers (the live tail does not).
    workers_from_blocks: int = Field(default=256, ge=1)
    #: Niceness added to the decode workers: on a busy CPU the keeper's own process (writer, risk,
    #: liquidations) runs first (0: same priority).
    decode_niceness: int = Field(default=10, ge=0, le=19)
    #: A tmpfs directory where the keeper and its decode workers leave each other large answers and
    #: rows, instead of copying them through pipes (less CPU; memory either way). A full or missing one
    #: falls back to the pipes; "" uses only the pipes.
    spool_dir: str = "/dev/shm"
    #: Wake the poller on newHeads from chain.ws_url (polling goes on regardless).
    use_ws: bool = True


class DevSettings(BaseModel):
    """Dev-chain only: anvil's public, well-known keys. Never put a real key in a file."""

    deployer_key: str | None = None
    risk_admin_key: str | None = None
    guardian_key: str | None = None


class LoggingSettings(BaseModel):
    """Log output: JSON lines for machines or a readable console; every line is scrubbed of secrets."""

    format: Literal["json", "console"] = "console"
    level: str = "INFO"
    #: Per-logger levels for noisy libraries, e.g. ``{"aiohttp.access" = "WARNING"}``.
    levels: dict[str, str] = Field(
        default_factory=lambda: {
            "aiohttp.access": "WARNING",
            "web3": "INFO",
            "urllib3": "WARNING",
            "apscheduler": "WARNING",
        }
    )
    colors: bool = False


class MetricsSettings(BaseModel):
    """Prometheus /metrics, served on an internal address only."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)
    path: str = "/metrics"


class WebhookSinkSettings(BaseModel):
    """An operator webhook. ``url`` often embeds a token (Slack, Telegram): it is never logged."""

    name: str = "webhook"
    url: str
    format: Literal["slack", "discord", "telegram"] = "slack"
    chat_id: str | None = None  # telegram only
    timeout: float = Field(default=10.0, gt=0)


class EmailSettings(BaseModel):
    """SMTP server for operator alerts (``recipients``) and users' liquidation emails."""

    host: str
    port: int = Field(default=587, ge=1, le=65535)
    tls: Literal["starttls", "ssl", "none"] = "starttls"
    ca_file: Path | None = None  # extra CA to trust (self-signed relay); system CAs otherwise
    username: str | None = None
    password_file: Path | None = None  # never the password itself in a file that is committed
    sender: str
    recipients: list[str] = Field(default_factory=list)
    subject_prefix: str = "[zanbara keeper]"
    timeout: float = Field(default=10.0, gt=0)


class AlertSettings(BaseModel):
    """Operator alerts and user warnings."""

    enabled: bool = True
    cooldown_seconds: float = Field(default=900.0, ge=0)
    send_resolved: bool = True
    webhooks: list[WebhookSinkSettings] = Field(default_factory=list)
    email: EmailSettings | None = None
    retry_attempts: int = Field(default=4, ge=1)
    retry_initial_backoff: float = Field(default=0.5, ge=0)
    retry_max_backoff: float = Field(default=30.0, ge=0)
    user_warnings: bool = True
    #: Accept user webhook URLs that are plain http or point at loopback/private addresses (dev/tests).
    allow_private_webhooks: bool = False
    user_webhook_timeout: float = Field(default=10.0, gt=0)


class ServerSettings(BaseModel):
    """The public page and JSON API (``keeper serve``): read-only, served from the database."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: How often the in-memory snapshot is reloaded from the database (seconds).
    refresh_interval: float = Field(default=1.0, gt=0)
    #: A published figure older than this (wall-clock age of its read) is marked stale.
    stale_after_seconds: float = Field(default=30.0, gt=0)
    #: /healthz: 503 when the latest snapshot's read is older than this (publisher or head stuck) ...
    max_snapshot_age_seconds: float = Field(default=60.0, gt=0)
    #: ... or when the chain head's block time is older than this (None: not checked) ...
    max_head_age_seconds: float | None = Field(default=None, gt=0)
    #: ... or when the index lags the published head by more than this many blocks.
    max_index_lag_blocks: int = Field(default=20, ge=0)
    #: Per-client token bucket (requests/second refill, burst capacity); 429 beyond.
    rate_limit_per_second: float = Field(default=10.0, gt=0)
    rate_limit_burst: int = Field(default=40, ge=1)
    #: /api/explain (one eth_call each): its own tighter bucket and a cap on concurrent simulations.
    explain_rate_per_second: float = Field(default=1.0, gt=0)
    explain_burst: int = Field(default=5, ge=1)
    explain_concurrency: int = Field(default=4, ge=1)
    explain_timeout: float = Field(default=5.0, gt=0)
    #: Paging bound of /api/liquidations.
    max_page_size: int = Field(default=100, ge=1, le=1000)
    #: The page's script re-fetches the figures this often (seconds, at most 5).
    page_poll_seconds: float = Field(default=3.0, gt=0, le=5)
    #: Trust X-Forwarded-For for the client address (only behind a reverse proxy you control).
    trust_forwarded_for: bool = False


class PublisherSettings(BaseModel):
    """The insurance-fund publisher (``keeper publish`` / ``keeper serve --publish``)."""

    #: Head polling interval (seconds, at most 2).
    poll_interval: float = Field(default=1.0, gt=0, le=2)
    #: A snapshot is taken at least this often even without a new head (seconds, at most 10).
    max_interval: float = Field(default=10.0, gt=0, le=10)
    #: Keep every snapshot this long (block time), then one per hour.
    full_resolution_seconds: int = Field(default=86_400, ge=60)
    #: Drop history older than this (seconds; None: keep hourly rows forever).
    retention_seconds: int | None = Field(default=None, ge=3_600)
    #: Whale snapshot: how often (seconds) and how many of the largest positions.
    whale_interval: int = Field(default=3_600, ge=1)
    whale_top: int = Field(default=20, ge=1, le=1000)
    #: Salt of the anonymized account ids (hash-truncated); change it to unlink published ids.
    whale_salt: str = "zanbara-whales"


class RiskSettings(BaseModel):
    """The live risk book (``keeper liquidate``, ``keeper accounts``)."""

    #: Oracle guard: a market whose primary and secondary answers differ by more than this is untrusted.
    max_oracle_deviation_bps: int = Field(default=200, ge=1)
    #: Reconciler: every this many blocks, compare this many accounts with Exchange.accountSummary.
    reconcile_every_blocks: int = Field(default=10, ge=1)
    reconcile_accounts: int = Field(default=20, ge=0)


class ExecutorSettings(BaseModel):
    """The liquidator and its transaction manager. The key: ``keystore`` + ``password_file``, or (dev
    chains only) the environment variable named by ``key_env``."""

    keystore: Path | None = None
    password_file: Path | None = None
    key_env: str = "KEEPER_PRIVATE_KEY"
    #: Minimum expected keeper reward (collateral units) to send a liquidation; 0: even at a loss.
    min_reward: int = Field(default=0, ge=0)
    #: Share of the block gas limit one batch may use, and batches sent per block.
    batch_fill: float = Field(default=0.5, gt=0, le=1)
    max_batches_per_block: int = Field(default=2, ge=1)
    max_fee_cap_gwei: float = Field(default=500.0, gt=0)
    replace_after_blocks: int = Field(default=3, ge=1)
    bump_pct: float = Field(default=12.5, ge=10)
    #: Head polling interval of the liquidation loop (seconds).
    poll_interval: float = Field(default=0.5, gt=0)
    #: The transaction journal (default: the index database).
    journal_url: str | None = None


class KeeperSettings(BaseModel):
    """This keeper process among several (see ``[leader]``)."""

    #: Name of this node in logs and in the leader table (default: ``<hostname>-<pid>``).
    node_id: str | None = Field(default=None, min_length=1, max_length=100)


class LeaderSettings(BaseModel):
    """Leader election among several nodes sharing one PostgreSQL database (:mod:`keeper.leader`).

    The node holding a PostgreSQL advisory lock is the leader: only it indexes and sends transactions.
    On SQLite there is a single node, always the leader.
    """

    #: false: a single node, always the leader, even on PostgreSQL (no lock taken).
    enabled: bool = True
    #: A standby tries to take the lock this often (seconds).
    retry_interval: float = Field(default=1.0, gt=0, le=10)
    #: The leader checks its lock connection (``SELECT 1``) this often (seconds).
    liveness_interval: float = Field(default=2.0, gt=0, le=10)
    #: The server ends a silent lock session after this long (``idle_session_timeout``), freeing the
    #: lock of a frozen or cut-off leader; a leader trusts its lock only this long after a good check.
    session_timeout: float = Field(default=8.0, ge=3, le=60)
    #: Connecting to the database for the lock (seconds).
    connect_timeout: float = Field(default=5.0, gt=0)


class FundingSettings(BaseModel):
    """Funding settlement, ADL and the insurance-fund watch (``keeper funding``). Funding and ADL each
    sign with their OWN key (their own lane), never the liquidator's: a stuck funding or ADL transaction
    must not hold a liquidation's nonce. Key: ``keystore`` + ``password_file``, or (dev chains only) the
    environment variable named by ``key_env`` / ``adl_key_env``."""

    enabled: bool = True
    keystore: Path | None = None
    password_file: Path | None = None
    key_env: str = "KEEPER_FUNDING_KEY"
    #: Head polling interval of the funding/ADL/fund-watch jobs (wall seconds; due times are chain time).
    poll_interval: float = Field(default=1.0, gt=0, le=30)
    #: Chain seconds before dueAt a settlement may already be simulated (the next block is later).
    lead_seconds: int = Field(default=0, ge=0, le=60)
    max_fee_cap_gwei: float = Field(default=200.0, gt=0)
    replace_after_blocks: int = Field(default=3, ge=1)
    bump_pct: float = Field(default=12.5, ge=10)
    adl_enabled: bool = True
    adl_keystore: Path | None = None
    adl_password_file: Path | None = None
    adl_key_env: str = "KEEPER_ADL_KEY"
    #: Extra share (bps) of the computed ADL step size, absorbing funding and rounding.
    adl_size_margin_bps: int = Field(default=100, ge=0, le=5_000)
    #: The fund watch: alert on socialized losses (BadDebtSettled with paidByFund < debt).
    fund_watch: bool = True
    #: The transaction journal (default: the index database).
    journal_url: str | None = None


class AnomalySettings(BaseModel):
    """The anomaly watch (:mod:`keeper.risk.anomaly`): rule-based flags, alerted and shown, never acted on.
    A rule is off when its threshold is 0."""

    enabled: bool = True
    #: How often the watch looks at the index checkpoint (seconds).
    poll_interval: float = Field(default=2.0, gt=0, le=60)
    #: Operator alerts per pass, one per flag; the rest of a pass's flags go out as one summary alert
    #: (e.g. a first pass over a long history). Every flag is stored, logged and counted regardless.
    alerts_per_pass: int = Field(default=5, ge=1)
    #: Optional block-time bound on every window (seconds), on top of the windows in blocks.
    window_seconds: int | None = Field(default=None, ge=1)
    #: One account taking more than this share of a market's open interest (both sides) ...
    oi_share_bps: int = Field(default=2_500, ge=0, le=10_000)
    #: ... within this many blocks ...
    oi_window_blocks: int = Field(default=300, ge=1)
    #: ... in a market whose open interest is worth at least this much (USD, at mark).
    oi_min_usd: int = Field(default=10_000, ge=0)
    #: Opens + closes of one account in one market within the window that flag a loop.
    loop_min_count: int = Field(default=6, ge=0)
    loop_window_blocks: int = Field(default=300, ge=1)
    #: New accounts first funded by one third-party address (Deposited.from) within the window.
    funding_min_accounts: int = Field(default=5, ge=0)
    funding_window_blocks: int = Field(default=1_800, ge=1)
    #: An oracle return beyond this many standard deviations of the recent returns ...
    oracle_sigma: float = Field(default=6.0, ge=0)
    #: ... over this many previous refreshes (at least oracle_min_samples of them) ...
    oracle_samples: int = Field(default=30, ge=2, le=1_000)
    oracle_min_samples: int = Field(default=5, ge=2)
    #: ... and at least this large (bps), so that a flat history does not flag every small move.
    oracle_min_move_bps: int = Field(default=500, ge=0)
    #: At most this many blocks of refreshes are examined per pass (after a long pause).
    oracle_max_blocks_per_pass: int = Field(default=1_000, ge=1)


class OperatorAlertSettings(BaseModel):
    """The operator conditions ``keeper run`` watches (besides the oracle and fund alerts)."""

    #: Alert when the index lags the chain head by more than this many blocks (0: off) ...
    max_index_lag_blocks: int = Field(default=50, ge=0)
    #: ... for at least this long (seconds), so that a catch-up after start-up does not alert.
    index_lag_grace_seconds: float = Field(default=30.0, ge=0)
    #: Alert when the liquidation key's native balance is below this (ether; 0: off).
    min_keeper_balance_eth: float = Field(default=0.05, ge=0)
    #: How often the balance and the lag are checked (seconds).
    check_interval: float = Field(default=10.0, gt=0, le=600)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KEEPER_", env_nested_delimiter="__", extra="forbid")

    chain: ChainSettings = Field(default_factory=ChainSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    indexer: IndexerSettings = Field(default_factory=IndexerSettings)
    dev: DevSettings = Field(default_factory=DevSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    publisher: PublisherSettings = Field(default_factory=PublisherSettings)
    risk: RiskSettings = Field(default_factory=RiskSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    keeper: KeeperSettings = Field(default_factory=KeeperSettings)
    leader: LeaderSettings = Field(default_factory=LeaderSettings)
    funding: FundingSettings = Field(default_factory=FundingSettings)
    anomaly: AnomalySettings = Field(default_factory=AnomalySettings)
    watch: OperatorAlertSettings = Field(default_factory=OperatorAlertSettings)

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
