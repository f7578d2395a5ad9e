"""deploy/ linted offline with the tools made for each file (there is no container
engine here): hadolint, the compose specification's schema, the Kubernetes schemas.
Each linter is first shown a broken file, so a pass means something. The gateway
configurations and policies inside them load as the gateway would load them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from gateway.config import Config, load
from gateway.policy.loader import load_dir
from gateway.policy.scopes import Catalogue
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def test_the_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = _tool("hadolint")
    sloppy = tmp_path / "Dockerfile"
    sloppy.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    assert _run(hadolint, str(sloppy)).returncode != 0
    done = _run(hadolint, str(DEPLOY / "Dockerfile"))
    assert done.returncode == 0, done.stdout + done.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    for needed in ("AS build", "USER 10001", "HEALTHCHECK", 'ENTRYPOINT ["gateway"]', "/healthz"):
        assert needed in text


def test_compose_matches_the_compose_specification(tmp_path: Path) -> None:
    check = _tool("check-jsonschema")
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  web:\n    image: nginx\n    restartt: always\n")
    assert _run(check, "--builtin-schema", "vendor.compose-spec", str(broken)).returncode != 0
    done = _run(check, "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert {"balancer", "gateway-1", "gateway-2", "postgres", "redis", "upstream"} <= set(services)


def test_kubernetes_manifests_match_the_kubernetes_schemas(tmp_path: Path) -> None:
    validate = _tool("kubernetes-validate")
    broken = tmp_path / "deployment.yaml"
    broken.write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"
        "spec: {replicas: three, selector: {}, template: {}}\n"
    )
    assert _run(validate, "--strict", "--quiet", str(broken)).returncode != 0
    manifests = sorted(str(p) for p in (DEPLOY / "kubernetes").glob("*.yaml"))
    done = _run(validate, "--strict", "--quiet", *manifests)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {
        doc["kind"]
        for path in manifests
        for doc in yaml.safe_load_all(Path(path).read_text())
        if doc
    }
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ConfigMap", "Job"} <= kinds  # fmt: skip


def test_the_drain_fits_in_the_grace_period() -> None:
    """Kubernetes kills a pod at terminationGracePeriodSeconds: preStop, the drain and
    the requests in flight must fit in it."""
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = float(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
    config = _configmap_config()
    shutdown = config.shutdown
    assert (
        pre_stop + shutdown.drain_seconds + shutdown.timeout_seconds
        < pod["terminationGracePeriodSeconds"]
    )
    probe = pod["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/readyz"
    assert probe["periodSeconds"] * probe["failureThreshold"] < shutdown.drain_seconds


def _configmap_config(tmp: Path | None = None) -> Config:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "configmap.yaml").read_text()))
    text = next(d for d in docs if d["metadata"]["name"] == "gateway-config")["data"][
        "gateway.yaml"
    ]
    path = (tmp or Path(tempfile.mkdtemp())) / "k8s-gateway.yaml"
    path.write_text(text)
    return load(path, {"GATEWAY_DATABASE_URL": "postgresql://x@db/gateway"})


def test_the_configurations_and_policies_in_deploy_load(tmp_path: Path) -> None:
    compose = load(
        DEPLOY / "compose" / "gateway.yaml", {"GATEWAY_DATABASE_URL": "postgresql://x@db/g"}
    )
    assert compose.rate_limiting.backend == "redis" and compose.trusted_proxies
    config = _configmap_config(tmp_path)
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "configmap.yaml").read_text()))
    policies = next(d for d in docs if d["metadata"]["name"] == "gateway-policies")["data"]
    directory = tmp_path / "policies"
    directory.mkdir()
    for name, text in policies.items():
        (directory / name).write_text(text)
    scopes = Catalogue({name: d.implies for name, d in config.scopes.items()})
    assert load_dir(directory, scopes, frozenset(config.upstreams)).router.routes
