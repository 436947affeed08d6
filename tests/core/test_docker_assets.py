"""The operator assets under docker/ stay consistent with the code (no Docker engine runs here)."""

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from keeper.observability.metrics import KeeperMetrics
from keeper.risk.math import WarningTier

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _exported_names() -> set[str]:
    m = KeeperMetrics()
    m.accounts_by_tier.labels(tier=WarningTier.HEALTHY.name.lower()).set(0)
    from prometheus_client import generate_latest

    names = set()
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        names.update(sample.name for sample in family.samples)
        names.add(family.name)
    return names


def test_dashboard_queries_only_metrics_the_keeper_exports() -> None:
    dash = json.loads((DOCKER / "grafana" / "dashboards" / "zanbara-keeper.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"\bkeeper_[a-z_]+", e)}
    exported = _exported_names()
    bases = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in exported} | exported
    missing = {n for n in used if n not in exported and re.sub(r"_(total|bucket)$", "", n) not in bases}
    assert not missing, f"dashboard uses metrics the keeper does not export: {sorted(missing)}"
    assert len(dash["panels"]) >= 15


def test_image_runs_as_non_root_from_pinned_bases() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^USER keeper$", text, re.M)
    for line in re.findall(r"^FROM (\S+)", text, re.M):
        assert re.search(r":\d+\.\d+\.\d+-", line), f"unpinned base image {line}"
    compose = (DOCKER / "compose.yaml").read_text()
    for service in ("anvil", "postgres", "keeper-1", "keeper-2", "prometheus", "grafana"):
        assert f"\n  {service}:" in compose
