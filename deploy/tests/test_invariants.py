"""The invariants of manifests.py: each holds on the shipped overlays, and each catches the
broken manifest it exists for (the seeded faults of the old validator's self-test among them)."""

import pytest
from conftest import rendered

import manifests as m

OVERLAYS = {
    "deploy/overlays/dev": {"dev": True},
    "deploy/overlays/production": {},
    "deploy/tests/overlays/production": {"deployable": True},
    "deploy/tests/overlays/ingress-nginx": {"deployable": True},
    "deploy/tests/overlays/gateway-api": {"deployable": True},
}


@pytest.mark.parametrize("path", OVERLAYS)
def test_shipped_overlays_hold_every_invariant(path):
    assert m.check_all(rendered(path), **OVERLAYS[path]) == []


def test_production_as_shipped_is_not_deployable():
    problems = m.check_all(rendered("deploy/overlays/production"), deployable=True)
    assert any("REPLACE_ME.example.com" in p for p in problems)  # the Origin allowlist
    assert any("REPLACE_ME_HAPROXY_POD_CIDR" in p for p in problems)


def gateway(docs):
    return m.one(docs, "Deployment", "gateway")


def container(deploy, name="gateway"):
    return next(c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def config(docs):
    return m.one(docs, "ConfigMap", "gateway-config")["data"]


def set_haproxy(docs, old, new):
    cm = m.one(docs, "ConfigMap", "gateway-lb-haproxy")
    assert old in cm["data"]["haproxy.cfg"]
    cm["data"]["haproxy.cfg"] = cm["data"]["haproxy.cfg"].replace(old, new)


def test_grace_shorter_than_the_drain_fails(production):
    gateway(production)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 40
    problems = m.check_grace_covers_drain(production)
    assert any("drain window 30s + close grace 5s" in p for p in problems)
    assert any("GATEWAY_DRAIN_TIMEOUT" in p for p in problems)


def test_drain_window_grown_past_the_grace_fails(production):
    config(production)["GATEWAY_DRAIN_WINDOW"] = "2m"
    assert any("drain window 120s" in p for p in m.check_grace_covers_drain(production))


def test_missing_prestop_drain_fails(production):
    del container(gateway(production))["lifecycle"]
    assert any("preStop must be `gateway drain --local`" in p for p in m.check_grace_covers_drain(production))


def test_probe_on_the_proxy_port_fails(production):
    container(gateway(production))["readinessProbe"]["httpGet"]["port"] = "proxy"
    assert any("readinessProbe on port proxy (8081)" in p for p in m.check_no_probe_on_proxy_port(production))


def test_probe_by_number_on_the_proxy_port_fails(production):
    container(gateway(production))["livenessProbe"]["httpGet"]["port"] = 8081
    assert any("livenessProbe" in p for p in m.check_no_probe_on_proxy_port(production))


def test_insecure_admin_outside_dev_fails(production):
    config(production)["GATEWAY_ADMIN_INSECURE"] = "true"
    assert any("GATEWAY_ADMIN_INSECURE outside the dev overlay" in p for p in m.check_admin_secure(production))


def test_dev_overlay_is_insecure_only_because_it_says_so(dev):
    assert any("GATEWAY_ADMIN_INSECURE" in p for p in m.check_admin_secure(dev))
    assert m.check_admin_secure(dev, dev=True) == []


def test_optional_token_secret_fails(production):
    volumes = gateway(production)["spec"]["template"]["spec"]["volumes"]
    next(v for v in volumes if v["name"] == "admin-token")["secret"]["optional"] = True
    assert any("GATEWAY_ADMIN_TOKEN_FILE" in p and "required Secret" in p for p in m.check_admin_secure(production))


def test_one_token_for_both_scopes_fails(production):
    env = container(gateway(production))["env"]
    metrics = next(e for e in env if e["name"] == "GATEWAY_METRICS_TOKEN_FILE")
    metrics["value"] = "/var/run/secrets/gateway/admin/token"
    assert any("metrics token must not be the operator token" in p for p in m.check_admin_secure(production))


def test_tunnel_timeout_below_two_pings_fails(production):
    set_haproxy(production, "timeout tunnel 1h", "timeout tunnel 10s")
    assert any("timeout tunnel 10s <= 2 x ping interval 25s" in p for p in m.check_tunnel_timeout(production))


def test_missing_tunnel_timeout_fails(production):
    set_haproxy(production, "timeout tunnel 1h", "")
    assert any("no `timeout tunnel`" in p for p in m.check_tunnel_timeout(production))


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "10.0.0.0/8,0.0.0.0/0"])
def test_trusting_everything_fails(production, cidr):
    config(production)["GATEWAY_TRUSTED_PROXIES"] = cidr
    assert any("trusts every address" in p for p in m.check_trusted_proxies(production))


def test_trusted_proxies_missing_fails(production):
    del config(production)["GATEWAY_TRUSTED_PROXIES"]
    assert any("GATEWAY_TRUSTED_PROXIES of configmap gateway-config not found" in p
               for p in m.check_trusted_proxies(production))


def test_pdb_min_available_100_percent_fails(production):
    pdb = m.one(production, "PodDisruptionBudget", "gateway")
    del pdb["spec"]["maxUnavailable"]
    pdb["spec"]["minAvailable"] = "100%"
    assert any("PodDisruptionBudget gateway: use maxUnavailable: 1" in p for p in m.check_pdbs(production))


def test_missing_haproxy_pdb_fails(production):
    production.remove(m.one(production, "PodDisruptionBudget", "gateway-lb"))
    assert any("Deployment gateway-lb: no PodDisruptionBudget" in p for p in m.check_pdbs(production))


def test_always_allow_eviction_fails(production):
    m.one(production, "PodDisruptionBudget", "gateway")["spec"]["unhealthyPodEvictionPolicy"] = "AlwaysAllow"
    assert any("IfHealthyBudget" in p for p in m.check_pdbs(production))


@pytest.mark.parametrize("surge", ["25%", 2])
def test_surge_above_one_fails(production, surge):
    gateway(production)["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = surge
    assert any(f"maxSurge {surge} > 1" in p for p in m.check_rollout(production))


def test_missing_min_ready_seconds_fails(production):
    del gateway(production)["spec"]["minReadySeconds"]
    assert any("minReadySeconds" in p for p in m.check_rollout(production))


def test_hair_trigger_readiness_fails(production):
    probe = container(gateway(production))["readinessProbe"]
    probe["failureThreshold"], probe["timeoutSeconds"] = 1, 1
    problems = m.check_readiness(production)
    assert any("failureThreshold < 2" in p for p in problems)
    assert any("timeoutSeconds < 2" in p for p in problems)


def test_haproxy_fall_1_fails(production):
    set_haproxy(production, "fall 2", "fall 1")
    assert any("`fall 1` < 2" in p for p in m.check_readiness(production))


def test_memory_request_below_limit_fails(production):
    container(gateway(production))["resources"]["requests"]["memory"] = "256Mi"
    assert any("memory request 256Mi != limit 768Mi" in p for p in m.check_resources(production))


def test_too_few_server_slots_fails(production):
    set_haproxy(production, "server-template gw 60", "server-template gw 50")
    assert any("50 server slots < maxReplicaCount 50 + maxSurge 1" in p for p in m.check_haproxy_tier(production))


def test_haproxy_sending_proxy_to_the_plain_port_fails(production):
    set_haproxy(production, "svc.cluster.local:8081", "svc.cluster.local:8080")
    assert any("the gateways' PROXY listener is :8081" in p for p in m.check_haproxy_tier(production))


def test_haproxy_tier_too_small_for_the_fleet_fails(production):
    m.one(production, "Deployment", "gateway-lb")["spec"]["replicas"] = 3
    assert any("3 x maxconn 100000 = 300000 tunnels < maxReplicaCount x per-pod target = 500000" in p
               for p in m.check_haproxy_tier(production))


def test_haproxy_grace_shorter_than_prestop_plus_hard_stop_fails(production):
    set_haproxy(production, "hard-stop-after 10s", "hard-stop-after 60s")
    assert any("grace 100s < preStop (sleep 20s + drain-peer 60s) + hard-stop-after 60s" in p
               for p in m.check_haproxy_tier(production))


def test_haproxy_prestop_without_drain_peer_fails(production):
    lb = m.one(production, "Deployment", "gateway-lb")
    container(lb, "haproxy")["lifecycle"]["preStop"]["exec"]["command"] = ["sleep", "5"]
    assert any("does not run `gateway drain-peer`" in p for p in m.check_haproxy_tier(production))


def test_namespace_changed_in_one_place_only_fails(production):
    for d in production:
        if d["metadata"].get("namespace") == "gateway":
            d["metadata"]["namespace"] = "ws"
    assert any("namespace gateway, objects are in ws" in p for p in m.check_namespace_agrees(production))


def test_durations():
    assert m.duration_s("1h") == 3600
    assert m.duration_s("1m30s") == 90
    assert m.duration_s("100ms") == 0.1
    with pytest.raises(ValueError):
        m.duration_s("soon")
