"""deploy/ linted offline with the tools made for each file (there is no container
engine here): hadolint, the compose specification's schema, the Kubernetes schemas.
Each linter is first shown a broken file, so a pass means something. The gateway
configurations and policies inside them load as the gateway would load them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.foundation.config import load
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


def test_the_configurations_and_policies_in_deploy_load() -> None:
    env = {"GATEWAY_DATABASE_URL": "postgresql://x@db/g", "GATEWAY_REDIS_URL": "redis://r:6379/0"}
    compose = load(DEPLOY / "compose" / "gateway.yaml", env)
    assert compose.rate_limiting.backend == "redis" and compose.trusted_proxies
    image = load(DEPLOY / "image" / "gateway.yaml", env)
    assert (
        image.resolve(image.policies.dir) == DEPLOY / "image" / "policies"
    )  # /etc/gateway/policies
    assert image.logging.format == "json" and image.state_dir == "/var/lib/gateway"
    scopes = Catalogue({name: d.implies for name, d in image.scopes.items()})
    assert load_dir(ROOT / "policies", scopes, frozenset(image.upstreams)).router.routes
