"""The schema checks of validate.py reject what the API server would."""

from conftest import rendered

import manifests as m
import validate


def test_misspelled_deployment_field_fails():
    docs = rendered("deploy/tests/overlays/production")
    d = m.one(docs, "Deployment", "gateway")
    d["spec"]["template"]["spec"]["terminationGracePeriod"] = 120
    assert validate.check_schema(d)


def test_misspelled_scaledobject_field_fails():
    d = m.one(rendered("deploy/tests/overlays/production"), "ScaledObject", "gateway")
    d["spec"]["fallback"]["replica"] = 8
    assert any("unknown field .spec.fallback.replica" in p for p in validate.check_schema(d))


def test_unquoted_trigger_value_fails():
    d = m.one(rendered("deploy/tests/overlays/production"), "ScaledObject", "gateway")
    d["spec"]["triggers"][0]["metadata"]["threshold"] = 10000
    assert validate.check_schema(d)


def test_podmonitor_with_a_wrong_auth_shape_fails():
    d = m.one(rendered("deploy/tests/overlays/production"), "PodMonitor", "gateway")
    d["spec"]["podMetricsEndpoints"][0]["bearerTokenSecrett"] = {"name": "x", "key": "token"}
    assert validate.check_schema(d)


def test_httproute_unknown_field_fails():
    d = m.one(rendered("deploy/tests/overlays/gateway-api"), "HTTPRoute", "gateway")
    d["spec"]["rules"][0]["timeout"] = "0s"
    assert validate.check_schema(d)


def test_shipped_objects_pass():
    for path in ("deploy/tests/overlays/production", "deploy/tests/overlays/gateway-api", "deploy/overlays/dev"):
        for d in rendered(path):
            assert validate.check_schema(d) == [], d["kind"]


def test_haproxy_syntax_error_fails():
    docs = rendered("deploy/tests/overlays/production")
    cm = m.one(docs, "ConfigMap", "gateway-lb-haproxy")
    cm["data"]["haproxy.cfg"] = cm["data"]["haproxy.cfg"].replace("balance leastconn", "balance fewestconn")
    assert any("haproxy -c" in p for p in validate.check_haproxy(docs))
