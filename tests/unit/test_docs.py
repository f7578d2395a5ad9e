"""The documentation: the README as a front door, the site building strictly, the
reference pages as the code prints them, and every configuration or policy example
in it loading as the gateway would load it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import reference
from gateway.foundation.config import ConfigError, load
from gateway.policy.loader import load_dir
from gateway.policy.scopes import Catalogue

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_the_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for needed in ("make demo", "make test", "docs/", "## Where to go next"):
        assert needed in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).exists(), page


@pytest.mark.parametrize("name", sorted(reference.PAGES))
def test_each_reference_page_is_what_the_code_prints(name: str) -> None:
    """Regenerate with `python -m gateway.reference docs/reference`."""
    committed = (DOCS / "reference" / name).read_text()
    assert committed == reference.PAGES[name](), f"docs/reference/{name} is stale"


def test_the_configuration_reference_names_every_key() -> None:
    page = reference.configuration()
    for key in ("limits.buffer_body_bytes", "webhooks.allowed_networks", "logging.format",
                "database.migration_lock_timeout_seconds", "upstreams.NAME.url",
                "tokens.signing_keys[].private_key_file", "self_service.session.jwks_url"):  # fmt: skip
        assert f"| `{key}` |" in page
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert all(not line.endswith("| |") for line in rows), "a key without a meaning"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """A broken link or a page left out of the navigation fails the build."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", tmp_path / "site"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "configuration" / "index.html").exists()


_POLICY_KEYS = {"upstream", "routes", "rate_limits", "rate_limit", "identity", "cost"}


def _yaml_blocks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        if page.name == "contract.md":
            continue
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S):
            found.append((page.name, block))
    return found


@pytest.mark.parametrize(("page", "block"), _yaml_blocks())
def test_every_yaml_example_in_the_docs_loads(page: str, block: str, tmp_path: Path) -> None:
    """A policy example loads as a policy file, anything else as a configuration file
    (the front proxies' own configurations excepted: they are run by their tests)."""
    if re.search(r"^(http|static_resources|  middlewares):", block, re.M) or "envoy" in block:
        pytest.skip("a front proxy's configuration (tests/frontproxy, tests/e2e/test_decisions)")
    config = load(ROOT / "config" / "gateway.yaml", {})
    top = set(re.findall(r"^([a-z_]+):", block, re.M))
    if top and top <= _POLICY_KEYS:
        folder = tmp_path / "policies"
        folder.mkdir()
        # A fragment about routes: with the shipped upstream, as a whole file would say.
        upstream = "" if "upstream" in top else "upstream: core\n"
        routes = "" if "routes" in top else "routes: []\n"
        (folder / "example.yaml").write_text(upstream + block + routes)
        scopes = Catalogue({name: d.implies for name, d in config.scopes.items()})
        extra = {"reports:write": ()} if "reports:write" in block else {}
        catalogue = Catalogue({**{n: tuple(d.implies) for n, d in config.scopes.items()}, **extra})
        assert load_dir(folder, catalogue if extra else scopes, frozenset(config.upstreams))
        return
    path = tmp_path / "gateway.yaml"
    path.write_text(block)
    try:
        load(
            path,
            {"GATEWAY_DATABASE_URL": "postgresql://x@db/g", "GATEWAY_REDIS_URL": "redis://r/0"},
        )
    except ConfigError as exc:
        pytest.fail(f"{page}: {exc}")
