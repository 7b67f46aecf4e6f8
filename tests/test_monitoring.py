"""The shipped dashboard and alert rules name only metrics Herald exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

MONITORING = Path(__file__).resolve().parent.parent / "scripts" / "monitoring"
SOURCES = [
    "app/metrics.py",
    "core/jobmetrics.py",
    "jobs/chat/job.py",
    "jobs/chat/chunks.py",
    "jobs/chat/breaker.py",
    "jobs/csvimport/job.py",
]


def exported_names() -> set[str]:
    root = MONITORING.parent.parent
    text = "".join((root / s).read_text() for s in SOURCES)
    return set(re.findall(r'"(herald_[a-z_]+)"', text))


def referenced(expr: str) -> set[str]:
    names = set(re.findall(r"herald_[a-z_]+", expr))
    # Histogram and Counter series carry suffixes the client adds.
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def test_alert_rules_cover_the_issue_and_name_real_metrics() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"HeraldLLMBreakerOpen", "HeraldQueueBacklog", "HeraldStreamErrors"} <= names
    breaker = next(r for r in rules if r["alert"] == "HeraldLLMBreakerOpen")
    assert breaker["for"] == "5m"
    exported = exported_names()
    for rule in rules:
        assert referenced(rule["expr"]) <= exported, rule["alert"]


def test_dashboard_panels_name_real_metrics() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exported = exported_names()
    assert len(dashboard["panels"]) >= 8
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert referenced(target["expr"]) <= exported, panel["title"]
