from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.foundation.config import Config, ConfigError, load

ROOT = Path(__file__).resolve().parents[2]
_SESSION = "self_service: {enabled: true, session: {jwks_file: j, issuer: i, audience: a, "


def test_shipped_file_matches_the_contract_defaults() -> None:
    config = load(ROOT / "config" / "gateway.yaml", {})
    defaults = Config()
    assert config.listen == defaults.listen
    assert config.admin == defaults.admin
    assert config.cache == defaults.cache
    assert config.limits == defaults.limits
    assert config.tokens == defaults.tokens
    assert config.cors == defaults.cors
    assert config.scopes == defaults.scopes
    assert config.self_service == defaults.self_service
    assert config.decisions == defaults.decisions
    assert config.scopes["me:read"].description == (
        "Read account data for the currently logged in user."
    )
    assert config.resolve(config.policies.dir) == ROOT / "policies"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: {port: eighty}", "listen.port: expected `int`, got `str`"),
        ("cache: {ttl: 5}", "cache.ttl: unknown field"),
        ("upstreams: {core: {timeout_seconds: 3}}", "upstreams.core.url: required"),
        (
            "upstreams: {core: {url: 'http://x', colour: red}}",
            "upstreams.core.colour: unknown field",
        ),
        ("scopes: {a: {implies: 3}}", "scopes.a.implies: expected `array`, got `int`"),
        ("listen: {port: 70000}", "listen.port: must be between 0 and 65535"),
        ("scopes: {a: {implies: [b]}}", "scopes.a.implies: unknown scope 'b'"),
        ("tokens: {default_ttl_seconds: 1000}", "must not exceed tokens.max_ttl_seconds"),
        ("upstreams: {core: {url: ftp://x}}", "upstreams.core.url: must start with http"),
        ("listen: [1, 2]", "listen: expected `object`, got `array`"),
        ("trusted_proxies: [10.0.0.0/8, lb]", "trusted_proxies[1]: 'lb' does not appear"),
        ("limits: {body_timeout_seconds: 0}", "limits.body_timeout_seconds: must be positive"),
        ("tracing: {sample_ratio: 1.5}", "tracing.sample_ratio: must be between 0 and 1"),
        ("tracing: {otlp_endpoint: collector:4318}", "tracing.otlp_endpoint: must be an http(s)"),
        ("tracing: {max_queue_size: 0}", "tracing.max_queue_size: must be positive"),
        ("listen: {port: 1", "invalid YAML"),
        ("- a\n- b", "the top level must be a mapping"),
        (
            "self_service: {enabled: true, session: {jwks_file: j, audience: a}}",
            "self_service.session.issuer: required when self_service is enabled",
        ),
        (
            "self_service: {enabled: true, session: {issuer: i, audience: a}}",
            "self_service.session: set exactly one of jwks_url and jwks_file",
        ),
        (
            _SESSION + "algorithms: [EdDSA, HS256]}}",
            "self_service.session.algorithms[1]: 'HS256' is refused",
        ),
        (
            _SESSION + "algorithms: [none]}}",
            "self_service.session.algorithms[0]: 'none' is refused",
        ),
        (
            "self_service: {enabled: true, path: /auth/keys, session: {jwks_file: j, issuer: i,"
            " audience: a}}",
            "self_service.path: /auth/ and /.well-known/ belong to the gateway",
        ),
        (
            "self_service: {enabled: true, allowed_scopes: [nope], session: {jwks_file: j,"
            " issuer: i, audience: a}}",
            "self_service.allowed_scopes[0]: unknown scope 'nope'",
        ),
        (
            "self_service: {enabled: true, expiry_days: {default: 400}, session: {jwks_file: j,"
            " issuer: i, audience: a}}",
            "self_service.expiry_days.default: must be between 1 and max",
        ),
    ],
)
def test_errors_name_file_key_and_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("database: {url: postgresql://file/db}\n")
    env = {
        "GATEWAY_CONFIG": str(path),
        "GATEWAY_DATABASE_URL": "postgresql://env/db",
        "GATEWAY_ADMIN_TOKEN": "t0ken",
    }
    config = load(None, env)
    assert config.database.url == "postgresql://env/db"
    assert config.admin_token == "t0ken"
    with pytest.raises(ConfigError, match="no such file"):
        load(None, {"GATEWAY_CONFIG": str(tmp_path / "missing.yaml")})


def test_cli_reports_a_bad_config_on_one_line_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("limits: {max_body_bytes: -1}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "limits.max_body_bytes: must be positive" in result.stderr
    assert "Traceback" not in result.stderr


def test_state_dir_in_the_file_resolves_beside_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "g.yaml").write_text("state_dir: runtime\n")
    assert load(folder / "g.yaml", {}).state_path == folder / "runtime"
    (folder / "h.yaml").write_text("listen: {port: 1}\n")
    assert load(folder / "h.yaml", {}).state_path == Path(".gateway").resolve()
    (folder / "i.yaml").write_text(f"state_dir: {tmp_path / 'abs'}\n")
    assert load(folder / "i.yaml", {}).state_path == tmp_path / "abs"


def test_a_config_knows_its_file(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text("{}\n")
    assert load(tmp_path / "g.yaml", {}).source == str(tmp_path / "g.yaml")


def test_secrets_come_from_files_and_the_environment(tmp_path: Path) -> None:
    """`{file: …}` and `{env: …}` anywhere a string goes; `_FILE` forms of the overrides."""
    (tmp_path / "redis-url").write_text("redis://:s3cret@redis:6379/0\n")
    (tmp_path / "db-url").write_text("postgresql://gw:pw@db/gw\n")
    (tmp_path / "token").write_text("admin-token-from-a-file\n")
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(
        "rate_limiting: {backend: redis, redis_url: {file: redis-url}}\n"
        "tracing: {headers: {authorization: {env: COLLECTOR_AUTH}}}\n"
        "tokens: {signing_keys: [{kid: k1, private_key_file: {env: KEY_PATH}}]}\n"
    )
    env = {"COLLECTOR_AUTH": "Bearer abc", "KEY_PATH": "/run/secrets/k1.pem",
           "GATEWAY_DATABASE_URL_FILE": str(tmp_path / "db-url"),
           "GATEWAY_ADMIN_TOKEN_FILE": str(tmp_path / "token")}  # fmt: skip
    config = load(config_file, env)
    assert config.rate_limiting.redis_url == "redis://:s3cret@redis:6379/0"
    assert config.tracing.headers == {"authorization": "Bearer abc"}
    assert config.tokens.signing_keys[0].path == "/run/secrets/k1.pem"
    assert config.database.url == "postgresql://gw:pw@db/gw"
    assert config.admin_token == "admin-token-from-a-file"
    moved = load(config_file, {**env, "GATEWAY_REDIS_URL": "redis://other:6379/1"})
    assert moved.rate_limiting.redis_url == "redis://other:6379/1"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("rate_limiting: {redis_url: {file: nowhere}}\n", {}, "rate_limiting.redis_url: cannot read"),
        ("tracing: {headers: {x: {env: UNSET_VAR}}}\n", {}, "tracing.headers.x: environment variable UNSET_VAR is not set"),
        ("database: {url: {file: empty}}\n", {}, "database.url:"),
        ("admin: {port: 1}\n", {"GATEWAY_ADMIN_TOKEN_FILE": "/nonexistent/token"}, "GATEWAY_ADMIN_TOKEN_FILE: cannot read"),
    ],
)  # fmt: skip
def test_a_missing_secret_is_an_error_naming_where(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    (tmp_path / "empty").write_text("\n")
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(config_file, env)
    assert str(caught.value).startswith(f"{config_file}: ") and message in str(caught.value)
