"""Operators' observability: structured, scrubbed logs and Prometheus metrics."""

from keeper.observability.logging import bind, configure_logging, get_logger, log_context, register_secret
from keeper.observability.metrics import METRICS, KeeperMetrics, metrics_app

__all__ = [
    "METRICS",
    "KeeperMetrics",
    "bind",
    "configure_logging",
    "get_logger",
    "log_context",
    "metrics_app",
    "register_secret",
]
