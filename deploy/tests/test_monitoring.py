"""deploy/monitoring: the rules pass promtool (check and unit tests), the PrometheusRule
carries exactly the plain rules file's groups, and the Grafana dashboard is well-formed and
uses only metrics the gateway exports."""

import json
import re
import subprocess

import pytest
import yaml

from manifests import ROOT

MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "dashboards" / "gateway.json"
# Agreed with the gateway side of this change (build info, backend status, process metrics of
# prometheus-client's process collector): exported by the binary, documented with it.
AGREED = {
    "gateway_build_info",
    "gateway_backend_up",
    "process_open_fds",
    "process_max_fds",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
}
# Not the gateway's: kube-state-metrics (HPA) and HAProxy's exporter, used by the alert rules.
FOREIGN = re.compile(r"^(kube_|haproxy_)")
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "on", "ignoring", "group_left", "group_right", "rate",
    "increase", "histogram_quantile", "scalar", "unless", "and", "or", "without", "le", "offset",
    "bool", "label_values",
}


def documented_metrics() -> set[str]:
    """Metric names in docs/operations.md's metrics table (the gateway's metric list)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)`", section, re.M))


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression (bucket/sum/count suffixes of histograms folded)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"(by|on|ignoring|without|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r'"[^"]*"', "", expr)
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", expr)) - PROMQL_WORDS
    return {re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket",)) else n for n in names}


def known(name: str) -> bool:
    return name in documented_metrics() | AGREED or bool(FOREIGN.match(name))


@pytest.mark.parametrize("args", [["check", "rules", "gateway-rules.yaml"], ["test", "rules", "gateway-rules.test.yaml"]])
def test_promtool(args):
    r = subprocess.run(["promtool", *args], cwd=MONITORING, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_prometheusrule_is_the_rules_file():
    plain = yaml.safe_load((MONITORING / "gateway-rules.yaml").read_text())
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == plain["groups"]


def test_every_alert_has_severity_summary_and_known_metrics():
    plain = yaml.safe_load((MONITORING / "gateway-rules.yaml").read_text())
    alerts = [r for g in plain["groups"] for r in g["rules"]]
    tested = (MONITORING / "gateway-rules.test.yaml").read_text()
    for a in alerts:
        assert a["labels"]["severity"] in ("warning", "critical"), a["alert"]
        assert a["annotations"]["summary"] and a["annotations"]["description"], a["alert"]
        assert f"alertname: {a['alert']}" in tested, f"{a['alert']} has no promtool unit test"
        unknown = {n for n in metric_names(a["expr"]) if not known(n)}
        assert not unknown, f"{a['alert']} uses unknown metrics {unknown}"


def test_issue_alerts_exist():
    names = {r["alert"] for g in yaml.safe_load((MONITORING / "gateway-rules.yaml").read_text())["groups"]
             for r in g["rules"]}
    assert {
        "GatewayUnevenDistribution", "GatewayDrainStuck", "GatewayFleetNearCapacity", "GatewayAtMaxReplicas",
        "GatewaySlowConsumers", "GatewayUnfillableGaps", "GatewayRefusals", "GatewayStoreLatencyHigh",
        "GatewayDeliveryLatencyHigh", "HAProxyGatewayServersDown",
    } <= names


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        assert p["type"] in ("timeseries", "bargauge", "stat", "row"), p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert 'namespace="$namespace"' in t["expr"], f"{p['title']}: not scoped to $namespace"
            assert t["expr"].count("(") == t["expr"].count(")"), p["title"]


def test_dashboard_uses_only_gateway_metrics():
    dash = json.loads(DASHBOARD.read_text())
    used = {n for p in dash["panels"] for t in p["targets"] for n in metric_names(t["expr"])}
    unknown = {n for n in used if not known(n)}
    assert not unknown, f"dashboard uses metrics the gateway does not export: {unknown}"
    # The pictures the issue asks for.
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for word in ("per pod", "share of fleet", "deliveries", "p99", "drains", "rebalances", "refusals"):
        assert word in titles, word


def test_metric_name_extraction():
    assert metric_names('sum by (le) (rate(gateway_delivery_latency_seconds_bucket{a="b"}[5m]))') == {
        "gateway_delivery_latency_seconds"
    }
    assert not known("gateway_no_such_metric")
