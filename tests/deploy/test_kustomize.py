"""The Kubernetes deployment as `kubectl apply -k` would apply it: every overlay rendered
by kubectl's own kustomize and validated strictly against the Kubernetes schemas, then
checked for what §20 promises (probes, the drain in the grace period, the security
context, a config change rolling the pods, no Secret shipped, a migration Job per
release). Skipped with one line without kubectl."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.foundation import database
from gateway.foundation.config import load
from gateway.policy.loader import load_dir
from gateway.policy.scopes import Catalogue
from tests.support import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["production", "with-redis"]
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("Kustomize tests need kubectl: apt-get install kubectl")
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_and_passes_the_kubernetes_schemas(
    overlay: str, tmp_path: Path
) -> None:
    docs = render(KUBERNETES / overlay)
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({**_one(docs, "Deployment"), "spec": {"replicas": "three"}}))
    assert subprocess.run([VALIDATE, "--strict", "--quiet", broken], capture_output=True).returncode
    done = subprocess.run([VALIDATE, "--strict", "--quiet", out], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted(["ConfigMap", "ConfigMap", "Deployment", "Service", "Service",
                            "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
                            "Job"])  # fmt: skip
    assert "Secret" not in kinds  # referenced, never shipped


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_drains_inside_its_grace_and_runs_locked_down(overlay: str) -> None:
    docs = render(KUBERNETES / overlay)
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = _config(docs)
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain, timeout = config.shutdown.drain_seconds, config.shutdown.timeout_seconds
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + timeout + 10
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                        ("startupProbe", "/healthz")):  # fmt: skip
        assert container[probe]["httpGet"]["path"] == path and container[probe]["timeoutSeconds"]
    ready = container["readinessProbe"]
    assert ready["failureThreshold"] >= 2  # one slow answer does not take a pod out
    assert ready["periodSeconds"] * ready["failureThreshold"] <= drain  # out before it stops
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone", "kubernetes.io/hostname"}  # fmt: skip
    assert container["args"] == ["serve", "--no-migrate"] and not config.database.migrate_on_start
    assert container["image"].startswith("registry.example.com/")  # the overlay's image
    assert "resources" in container and container["resources"]["limits"]["memory"]
    # Secrets as files, read through the _FILE variables; none in the ConfigMap.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GATEWAY_DATABASE_URL_FILE"].startswith("/etc/gateway/secrets/")
    assert "GATEWAY_DATABASE_URL" not in env and "GATEWAY_ADMIN_TOKEN" not in env
    assert config.trusted_proxies and "10.0.0.0/8" not in config.trusted_proxies


def test_a_configuration_change_rolls_the_pods(tmp_path: Path) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    before = _config_volume(render(copy / "production"))
    config = copy / "production" / "gateway.yaml"
    config.write_text(config.read_text().replace("drain_seconds: 5", "drain_seconds: 6"))
    after = _config_volume(render(copy / "production"))
    assert before.startswith("gateway-config-") and after.startswith("gateway-config-")
    assert before != after  # the pod template changed: a rollout


def test_the_admin_port_is_closed_but_to_monitoring_and_the_migration() -> None:
    docs = render(KUBERNETES / "production")
    policy = _one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    admin = [rule for rule in policy["ingress"] if rule["ports"][0]["port"] == 8081]
    (rule,) = admin
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}  # fmt: skip
    assert rule["from"][1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "migrate"
    internet = [r for r in policy["egress"] if "to" in r and "ipBlock" in r["to"][0]]
    assert "10.0.0.0/8" in internet[0]["to"][0]["ipBlock"]["except"]
    services = {s["metadata"]["name"]: s for s in docs if s["kind"] == "Service"}
    assert [p["targetPort"] for p in services["gateway"]["spec"]["ports"]] == ["http"]
    assert [p["targetPort"] for p in services["gateway-admin"]["spec"]["ports"]] == ["admin"]


def test_the_migration_job_is_named_for_the_newest_migration() -> None:
    """A release that adds a migration applies a new Job; one that does not, none."""
    job = _one(render(KUBERNETES / "production"), "Job")
    newest = database.migrations()[-1][0]
    assert job["metadata"]["name"] == f"gateway-migrate-{newest:04d}"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]


def test_the_shipped_policies_are_the_repositorys() -> None:
    shipped = KUBERNETES / "base" / "policies"
    assert sorted(p.name for p in shipped.glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "policies").glob("*.yaml"))  # fmt: skip
    for path in shipped.glob("*.yaml"):
        assert path.read_text() == (ROOT / "policies" / path.name).read_text(), path.name
    config = load(
        KUBERNETES / "base" / "gateway.yaml", {"GATEWAY_DATABASE_URL": "postgresql://x/y"}
    )
    scopes = Catalogue({name: d.implies for name, d in config.scopes.items()})
    assert load_dir(shipped, scopes, frozenset(config.upstreams)).router.routes


def _config_volume(docs: list[dict[str, Any]]) -> str:
    volumes = _one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    return str(next(v for v in volumes if v["name"] == "config")["configMap"]["name"])


def _config(docs: list[dict[str, Any]]) -> Any:
    name = _config_volume(docs)
    text = next(d for d in docs if d["metadata"]["name"] == name)["data"]["gateway.yaml"]
    path = Path(tempfile.mkdtemp()) / "gateway.yaml"
    path.write_text(text)
    return load(path, {"GATEWAY_DATABASE_URL": "postgresql://x@db/g",
                       "GATEWAY_REDIS_URL": "redis://r:6379/0"})  # fmt: skip
