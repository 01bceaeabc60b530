"""The Grafana dashboard and Prometheus alerts query only metrics the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from auth_service.metrics import Metrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}
# Prometheus's own series, PromQL's operators and keywords: not metrics of the service.
PROMETHEUS = {"up"}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring"}


def exported() -> set[str]:
    """Return every series name a service's registry can expose."""
    names = set()
    for fam in Metrics().registry.collect():
        names |= {fam.name + s for s in SUFFIXES[fam.type]}
    return names


def metric_names(expr: str) -> set[str]:
    """Return the identifiers of ``expr`` that can only be metric names."""
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    expr = re.sub(r"\b[a-z_]+\s*\(", "(", expr)  # function names
    return {t for t in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr) if t not in KEYWORDS}


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "kfaar-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":  # label_values(METRIC, LABEL): the metric is the query
            exprs.append(re.fullmatch(r"label_values\((\w+), *\w+\)", v["query"]).group(1))
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_the_parser_finds_metric_names() -> None:
    expr = 'histogram_quantile(0.99, sum by (le) (rate(kfaar_x_bucket{m="a b"}[5m]))) > 1'
    assert metric_names(expr) == {"kfaar_x_bucket"}
    assert metric_names('sum(up{job="$job",instance=~"$instance"})') == {"up"}


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_query_names_exported_metrics(source: str) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    known = exported() | PROMETHEUS
    assert len(exprs) >= 7
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= known, f"{sorted(names - known)} in {expr!r} are not exported"


def test_the_alerts_cover_what_operators_asked_for() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"KfaarSilentDoors", "KfaarRefusalSpike", "KfaarIndexSyncLag"} <= names
    assert {"KfaarReplicaDown", "KfaarReplicaUnhealthy"} <= names
    for g in rules["groups"]:
        for r in g["rules"]:
            assert r["annotations"]["summary"] and r["labels"]["severity"], r["alert"]


def test_a_renamed_metric_would_be_caught() -> None:
    known = exported()
    assert "kfaar_decisions_total" in known and "kfaar_request_seconds_bucket" in known
    assert not metric_names("rate(kfaar_decision_total[5m])") <= known
