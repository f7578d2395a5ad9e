"""Gateway configuration: `config/gateway.yaml`, validated at start.

`load()` raises `ConfigError` whose message names the file, the key path and the
reason; the CLI prints it on one line and exits 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from gateway.foundation import config_sources, redis_urls

DEFAULT_CONFIG = Path("config/gateway.yaml")


class ConfigError(Exception):
    """A configuration that cannot be used; the message is the whole story."""


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class ListenerTLS(_Strict, frozen=True, forbid_unknown_fields=True):
    """TLS on a listener (contract §19): TLS 1.2 and 1.3, ALPN http/1.1."""

    cert_file: str  # the certificate chain (PEM)
    key_file: str  # its private key (PEM)
    client_ca_file: str | None = None  # set: clients must present a certificate it signed


class Listen(_Strict, frozen=True, forbid_unknown_fields=True):
    host: str = "0.0.0.0"  # the address proxied traffic is accepted on
    port: int = 8080  # its port (0: any free one)
    tls: ListenerTLS | None = None  # TLS on this listener (cert_file, key_file, client_ca_file)


class AdminListen(_Strict, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"  # the admin API, /metrics and health; keep it private
    port: int = 8081  # its port
    tls: ListenerTLS | None = None  # TLS on the admin listener


class Database(_Strict, frozen=True, forbid_unknown_fields=True):
    # PostgreSQL; several hosts (db1,db2 with target_session_attrs=read-write) follow a
    # failover; null: an embedded server under state_dir/pgdata
    url: str | None = None
    min_pool_size: int = 2  # connections kept open per process
    max_pool_size: int = 10  # connections at most per process
    connect_timeout_seconds: float = 5.0  # to open a connection
    command_timeout_seconds: float = 5.0  # a statement, or a key lookup with its pool wait
    # false: `gateway migrate` runs apart (a Job, an init step), as `serve --no-migrate`
    migrate_on_start: bool = True
    migration_lock_timeout_seconds: float = 300.0  # waiting for another process's migration


class Cache(_Strict, frozen=True, forbid_unknown_fields=True):
    ttl_seconds: float = 60.0  # how long a valid key and a membership stay cached
    negative_ttl_seconds: float = 5.0  # how long an unknown key stays cached
    max_entries: int = 100_000  # entries per cache (least recently used go first)


class Policies(_Strict, frozen=True, forbid_unknown_fields=True):
    dir: str = "policies"  # the policy files (*.yaml), relative to this file
    reload: bool = True  # reload on a file change (only a valid set replaces the running one)


class UpstreamTLS(_Strict, frozen=True, forbid_unknown_fields=True):
    """For an https:// upstream: whom to trust, what name to check, what to present."""

    ca_file: str | None = None  # else the system's trust store
    server_name: str | None = None  # else the URL's host
    cert_file: str | None = None  # with key_file: mutual TLS to the backend
    key_file: str | None = None  # the key of that certificate
    insecure_skip_verify: bool = False  # warned about at start


class Upstream(_Strict, frozen=True, forbid_unknown_fields=True):
    url: str  # http:// or https:// origin, with an optional path prefix
    connect_timeout_seconds: float = 2.0  # to connect
    timeout_seconds: float = 30.0  # to the response headers, and each pause between body chunks
    tls: UpstreamTLS | None = None  # for an https:// upstream: CA, server name, client certificate


class Keys(_Strict, frozen=True, forbid_unknown_fields=True):
    prefix: str = "gwk"  # the key prefix (`gwk_…`), lower-case letters


class SigningKey(_Strict, frozen=True, forbid_unknown_fields=True):
    kid: str  # the key id in the tokens' header (JWKS)
    private_key_file: str | None = None  # a PEM file (a Kubernetes Secret, mounted)
    file: str | None = None  # the same, by its earlier name

    @property
    def path(self) -> str:
        found = self.private_key_file or self.file
        assert found is not None  # checked at load
        return found


class Tokens(_Strict, frozen=True, forbid_unknown_fields=True):
    issuer: str = "gateway"  # `iss` of actor and identity tokens
    audience: str = "gateway"  # `aud` of actor tokens
    default_ttl_seconds: int = 300  # an actor token's lifetime when none is asked for
    max_ttl_seconds: int = 900  # the longest lifetime one may ask for
    # [{kid, private_key_file}]; the first signs; empty: a dev key
    signing_keys: list[SigningKey] = msgspec.field(default_factory=list)


class Limits(_Strict, frozen=True, forbid_unknown_fields=True):
    max_body_bytes: int = 10 * 1024 * 1024  # a request body over this: 413
    max_header_bytes: int = 16384  # request header lines over this: 431
    header_timeout_seconds: float = 10.0  # to send the whole head (slowloris)
    body_timeout_seconds: float = 30.0  # the longest pause while reading a request body
    # Bodies up to this size arrive whole before an upstream connection is taken;
    # larger ones stream and must keep the minimum rate from 10 s after the head.
    buffer_body_bytes: int = 65536
    min_body_bytes_per_second: int = 1024  # a streamed body's average from 10 s after its head
    # An upgraded (WebSocket) connection with no byte either way for this long is cut.
    websocket_idle_seconds: float = 60.0


class Cors(_Strict, frozen=True, forbid_unknown_fields=True):
    # exact origins, "null" (Figma plugins) or "*"; empty: no CORS
    allow_origins: list[str] = msgspec.field(default_factory=list)
    # answered to a preflight
    allow_headers: list[str] = msgspec.field(
        default_factory=lambda: ["Authorization", "X-API-Key", "Content-Type"]
    )
    max_age_seconds: int = 600  # how long a browser keeps a preflight's answer


class ScopeDef(_Strict, frozen=True, forbid_unknown_fields=True):
    # scopes this one includes (transitively)
    implies: list[str] = msgspec.field(default_factory=list)
    description: str = ""  # shown on the API keys page


class Session(_Strict, frozen=True, forbid_unknown_fields=True):
    """Who is signed in to the API keys page: the host application's session JWT."""

    jwks_url: str | None = None  # the host application's JWKS (http or https)
    jwks_file: str | None = None  # or the same as a local file
    issuer: str | None = None  # `iss` the session JWT must carry
    audience: str | None = None  # `aud` it must carry
    # accepted `alg`s (none and HMAC are refused)
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    user_claim: str = "sub"  # the claim that is the user id of keys and memberships
    name_claim: str = "email"  # the claim shown as the signed-in person's name
    cookie: str | None = None  # also read the JWT from this cookie (else only Authorization)
    login_url: str | None = None  # where a signed-out person is sent (?return_to=PATH)


class ExpiryDays(_Strict, frozen=True, forbid_unknown_fields=True):
    # expiries the page offers, in days
    presets: list[int] = msgspec.field(default_factory=lambda: [7, 30, 60, 90])
    default: int = 30  # the one chosen by default
    max: int = 365  # the longest allowed
    allow_never: bool = False  # whether keys may never expire


class SelfService(_Strict, frozen=True, forbid_unknown_fields=True):
    enabled: bool = False  # serve the API keys page and its API
    path: str = "/account/api-keys"  # the page; its API under PATH/v1
    # who is signed in: the host application's session JWT
    session: Session = msgspec.field(default_factory=Session)
    # the expiries people may choose
    expiry_days: ExpiryDays = msgspec.field(default_factory=ExpiryDays)
    max_keys_per_user: int = 50  # active keys a person may have
    allowed_scopes: list[str] | None = None  # None: the whole catalogue


# The scope catalogue of the product's origin, with the descriptions its page shows.
SEED_SCOPES = {
    "me:read": "Read account data for the currently logged in user.",
    "organizations:read": "Read data about the organization",
    "organizations:write": "Update data and settings for the organization",
    "organizations:admin": "Administer organization data",
    "organizations:user:read": "Read data regarding the users in an organization",
    "organizations:user:invite": "Can invite users to an organizations",
    "organizations:user:write": "Can update user data in an organization",
    "projects:read": "Read project data directly",
    "projects:write": "Update project data",
    "projects:admin": "Administer Projects",
    "actor_tokens:create": "Create actor tokens for the user",
}


def _default_scopes() -> dict[str, ScopeDef]:
    implies = {
        "organizations:write": ["organizations:read"],
        "organizations:admin": [
            "organizations:write",
            "organizations:user:read",
            "organizations:user:invite",
            "organizations:user:write",
        ],
        "organizations:user:write": ["organizations:user:read"],
        "projects:write": ["projects:read"],
        "projects:admin": ["projects:write"],
    }
    return {
        name: ScopeDef(implies=implies.get(name, []), description=description)
        for name, description in SEED_SCOPES.items()
    }


def _default_upstreams() -> dict[str, Upstream]:
    return {"core": Upstream(url="http://127.0.0.1:9000")}


class DecisionListen(_Strict, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"  # reachable only by the front proxy
    port: int = 8082  # its port
    tls: ListenerTLS | None = None  # TLS on the decision listener


class Decisions(_Strict, frozen=True, forbid_unknown_fields=True):
    """Decision endpoints for a front proxy (nginx, Envoy, Traefik, Caddy)."""

    enabled: bool = False  # answer nginx, Envoy, Traefik and Caddy on their own listener
    listen: DecisionListen = msgspec.field(default_factory=DecisionListen)  # where


class RateLimiting(_Strict, frozen=True, forbid_unknown_fields=True):
    backend: str = "local"  # local: per process | redis: shared by every process and host
    # redis:// (rediss://) for one server, redis+sentinel://s1,s2,s3/master/0 or
    # redis+cluster://n1,n2,n3; GATEWAY_REDIS_URL sets it
    redis_url: str | None = None
    on_backend_error: str = "local"  # local | open | closed (503)
    sync_interval_ms: int = 50  # how often leases are topped up from Redis


class Credits(_Strict, frozen=True, forbid_unknown_fields=True):
    """How processes share a key's credit balance (contract §16)."""

    # A process takes at most this many of a key's credits at once (and an eighth of
    # what is left, so the last credits are spread thin across processes), and claims
    # at most a quarter of a take at a time. Smaller means more statements for a busy
    # key (1,000 made 140 a second at 35,000 requests a second, 4 % of the process's
    # CPU); what a process that dies loses is its last claim: about one sync interval
    # of its requests, and at most a quarter of this.
    max_share: int = 100_000
    # A share whose holder has not been heard from for this long goes back to the key
    # (the holder died); every process checks for such shares every tenth of it.
    lease_seconds: float = 30.0
    sync_interval_seconds: float = 1.0  # how often a process reports its spending
    idle_seconds: float = 10.0  # a share unused this long is given back


class Webhooks(_Strict, frozen=True, forbid_unknown_fields=True):
    """Webhook deliveries (contract §17)."""

    timeout_seconds: float = 10.0  # an attempt's time to answer
    # After each failed attempt, the wait before the next (±20 %); then failed.
    retry_schedule_seconds: list[float] = msgspec.field(
        default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000, 36000]
    )
    scan_interval_seconds: float = 60.0  # how often time-driven events are looked for
    poll_seconds: float = 1.0  # how often a process looks for due deliveries
    # Destinations allowed besides public addresses (CIDRs), e.g. an internal receiver.
    allowed_networks: list[str] = msgspec.field(default_factory=list)


class LeakReports(_Strict, frozen=True, forbid_unknown_fields=True):
    """GitHub secret scanning partner reports (contract §17)."""

    enabled: bool = False  # accept GitHub secret scanning reports
    path: str = "/leaks/github"  # on the proxy listener: GitHub must reach it
    # where GitHub publishes its signing keys
    github_public_keys_url: str = "https://api.github.com/meta/public_keys/secret_scanning"
    github_public_keys_file: str | None = None  # the same JSON from a file: used instead


class Logging(_Strict, frozen=True, forbid_unknown_fields=True):
    # json | text; unset: text on a terminal, JSON otherwise (the image sets json)
    format: str | None = None


class Shutdown(_Strict, frozen=True, forbid_unknown_fields=True):
    """Graceful stop on SIGTERM (contract §18)."""

    drain_seconds: float = 5.0  # /readyz 503 while still serving, before accepting stops
    timeout_seconds: float = 30.0  # for requests in flight once accepting has stopped


class Usage(_Strict, frozen=True, forbid_unknown_fields=True):
    """Usage per key and hour (contract §17)."""

    flush_seconds: float = 10.0  # each process writes its counts this often, one statement
    retention_days: int = 90  # hours older than this are deleted


class Tracing(_Strict, frozen=True, forbid_unknown_fields=True):
    """OpenTelemetry traces exported over OTLP/HTTP (contract §19)."""

    enabled: bool = False  # export OpenTelemetry traces over OTLP/HTTP
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"  # the collector
    # New traces started at this ratio; a client's `traceparent` decides for its own.
    sample_ratio: float = 0.01
    service_name: str = "gateway"  # `service.name` of the spans
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # e.g. the collector's auth
    # Ended spans waiting for export; beyond this they are dropped (and counted), so a
    # collector that is down or slow never holds a request up or grows the process.
    max_queue_size: int = 2048
    export_timeout_seconds: float = 5.0  # each batch, retries included


class NewNetworkNotice(_Strict, frozen=True, forbid_unknown_fields=True):
    # announce (key.new_network) the first use of a key from a network not seen for it
    enabled: bool = False
    ipv4_prefix: int = 24  # a "network" is the client address's /24 (IPv4)
    ipv6_prefix: int = 48  # or /48 (IPv6)
    remember_days: int = 30  # a network unseen this long is new again


class KeyPolicy(_Strict, frozen=True, forbid_unknown_fields=True):
    # Every new key must expire within this many days of its creation; a key over it
    # (made before the limit) is blocked, not revoked. null: no limit.
    max_lifetime_days: int | None = None
    new_network_notice: NewNetworkNotice = msgspec.field(default_factory=NewNetworkNotice)


class Config(_Strict, frozen=True, forbid_unknown_fields=True):
    state_dir: str = ".gateway"  # the embedded database and a dev signing key live here
    listen: Listen = msgspec.field(default_factory=Listen)
    admin: AdminListen = msgspec.field(default_factory=AdminListen)
    database: Database = msgspec.field(default_factory=Database)
    cache: Cache = msgspec.field(default_factory=Cache)
    policies: Policies = msgspec.field(default_factory=Policies)
    # name → where routes forward (a policy file's `upstream:`)
    upstreams: dict[str, Upstream] = msgspec.field(default_factory=_default_upstreams)
    keys: Keys = msgspec.field(default_factory=Keys)
    key_policy: KeyPolicy = msgspec.field(default_factory=KeyPolicy)
    tokens: Tokens = msgspec.field(default_factory=Tokens)
    limits: Limits = msgspec.field(default_factory=Limits)
    cors: Cors = msgspec.field(default_factory=Cors)
    # the scope catalogue: name → implies, description (shown on the API keys page)
    scopes: dict[str, ScopeDef] = msgspec.field(default_factory=_default_scopes)
    self_service: SelfService = msgspec.field(default_factory=SelfService)
    decisions: Decisions = msgspec.field(default_factory=Decisions)
    rate_limiting: RateLimiting = msgspec.field(default_factory=RateLimiting)
    credits: Credits = msgspec.field(default_factory=Credits)
    usage: Usage = msgspec.field(default_factory=Usage)
    webhooks: Webhooks = msgspec.field(default_factory=Webhooks)
    leak_reports: LeakReports = msgspec.field(default_factory=LeakReports)
    shutdown: Shutdown = msgspec.field(default_factory=Shutdown)
    logging: Logging = msgspec.field(default_factory=Logging)
    tracing: Tracing = msgspec.field(default_factory=Tracing)
    # Load balancers and front proxies whose X-Forwarded-For is believed (CIDRs).
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    # Where relative paths (policies.dir, signing key files) resolve; set by load().
    base_dir: str = "."
    source: str = "(defaults)"  # the file it came from, for errors found after loading
    admin_token: str | None = None

    def resolve(self, path: str) -> Path:
        """A path from the file, relative to the configuration file's directory."""
        return (Path(self.base_dir) / path).resolve()

    @property
    def state_path(self) -> Path:
        # Runtime state lives in the working directory unless state_dir says otherwise.
        return Path(self.state_dir).resolve()


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and return the configuration, applying environment overrides."""
    env = os.environ if environ is None else environ
    if path is None:
        path = Path(env.get("GATEWAY_CONFIG") or DEFAULT_CONFIG)
    base_dir = path.resolve().parent if path.exists() else Path.cwd()
    raw = _read_yaml(path) if path.exists() else _missing(path, env)
    try:
        raw = config_sources.resolve_references(raw, env, base_dir)
        config_sources.apply_overrides(raw, env)
    except config_sources.SourceError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    raw["base_dir"] = str(base_dir)
    if path.exists():
        _state_dir_beside_the_file(raw, path)
    raw["source"] = str(path)
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_named(raw, str(exc))}") from None
    _check(config, path)
    return config


def _state_dir_beside_the_file(raw: dict[str, Any], path: Path) -> None:
    """A `state_dir` written in the file is relative to the file, like every other path
    in it; only the default (`.gateway`) lives in the working directory."""
    state_dir = raw.get("state_dir")
    if isinstance(state_dir, str) and not Path(state_dir).is_absolute():
        raw["state_dir"] = str((path.resolve().parent / state_dir).resolve())


# Mappings whose keys are names ops choose: an error inside one names the entry.
_NAMED = {"upstreams": Upstream, "scopes": ScopeDef}


def named_entry_error(mapping: object, entry_type: type, where: str) -> str | None:
    """`where.NAME.field: reason` for the first entry of `mapping` that does not convert.

    msgspec reports `upstreams[...]` for an error inside a dict value; this finds
    which entry it was by converting them one by one."""
    if not isinstance(mapping, dict):
        return None
    for name, value in mapping.items():
        try:
            msgspec.convert(value, entry_type)
        except msgspec.ValidationError as exc:
            return f"{where}.{name}{_readable(str(exc), lead='.')}"
    return None


def _named(raw: dict[str, Any], message: str) -> str:
    for key, entry_type in _NAMED.items():
        if f"$.{key}[...]" in message:
            found = named_entry_error(raw.get(key), entry_type, key)
            if found is not None:
                return found
    return _readable(message)


def _missing(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    # The default location may be absent (defaults apply); a named file may not.
    if env.get("GATEWAY_CONFIG") or path != DEFAULT_CONFIG:
        raise ConfigError(f"{path}: no such file")
    return {}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {where}invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _readable(message: str, lead: str = "") -> str:
    """msgspec says "Expected `int`, got `str` - at `$.listen.port`"; lead with the key path.
    With `lead`, the path continues one already written (`upstreams.core` + `.url: …`)."""
    reason, sep, where = message.rpartition(" - at ")
    if not sep:
        reason, where = message, "$"
    key = where.strip("`").removeprefix("$").removeprefix(".")
    missing = re.match(r"Object (missing required|contains unknown) field `(.+)`", reason)
    if missing:
        key = f"{key}.{missing[2]}".lstrip(".")
        reason = "required" if missing[1] == "missing required" else "unknown field"
    if lead:
        return f"{lead}{key}: {reason[0].lower()}{reason[1:]}" if key else f": {reason}"
    return f"{key or '(top level)'}: {reason[0].lower()}{reason[1:]}"


def _check(config: Config, path: Path) -> None:
    problems = [
        *_check_values(config),
        *_check_scopes(config.scopes),
        *_check_self_service(config.self_service, config.scopes),
        *_check_rate_limiting(config.rate_limiting),
        *_check_networks("trusted_proxies", config.trusted_proxies),
        *_check_networks("webhooks.allowed_networks", config.webhooks.allowed_networks),
        *_check_signing_keys(config.tokens.signing_keys),
        *(["logging.format: must be json or text"]
          if config.logging.format not in (None, "json", "text") else []),
        *(["key_policy.max_lifetime_days: must be from 1 to 36500 (or null: no limit)"]
          if config.key_policy.max_lifetime_days is not None
          and not 1 <= config.key_policy.max_lifetime_days <= 36500 else []),
        *_check_new_network_notice(config.key_policy.new_network_notice),
    ]  # fmt: skip
    if problems:
        raise ConfigError(f"{path}: {problems[0]}")


def _check_values(config: Config) -> list[str]:
    out: list[str] = []
    ports = (
        ("listen.port", config.listen.port),
        ("admin.port", config.admin.port),
        ("decisions.listen.port", config.decisions.listen.port),
    )
    for name, port in ports:
        if not 0 <= port <= 65535:
            out.append(f"{name}: must be between 0 and 65535")
    positive = {
        "cache.ttl_seconds": config.cache.ttl_seconds,
        "cache.negative_ttl_seconds": config.cache.negative_ttl_seconds,
        "cache.max_entries": config.cache.max_entries,
        "tokens.default_ttl_seconds": config.tokens.default_ttl_seconds,
        "tokens.max_ttl_seconds": config.tokens.max_ttl_seconds,
        "limits.max_body_bytes": config.limits.max_body_bytes,
        "limits.max_header_bytes": config.limits.max_header_bytes,
        "limits.header_timeout_seconds": config.limits.header_timeout_seconds,
        "limits.body_timeout_seconds": config.limits.body_timeout_seconds,
        "limits.buffer_body_bytes": config.limits.buffer_body_bytes,
        "limits.min_body_bytes_per_second": config.limits.min_body_bytes_per_second,
        "limits.websocket_idle_seconds": config.limits.websocket_idle_seconds,
        "database.max_pool_size": config.database.max_pool_size,
        "database.migration_lock_timeout_seconds": config.database.migration_lock_timeout_seconds,
        "credits.max_share": config.credits.max_share,
        "credits.lease_seconds": config.credits.lease_seconds,
        "credits.sync_interval_seconds": config.credits.sync_interval_seconds,
        "credits.idle_seconds": config.credits.idle_seconds,
        "usage.flush_seconds": config.usage.flush_seconds,
        "usage.retention_days": config.usage.retention_days,
        "webhooks.timeout_seconds": config.webhooks.timeout_seconds,
        "webhooks.scan_interval_seconds": config.webhooks.scan_interval_seconds,
        "webhooks.poll_seconds": config.webhooks.poll_seconds,
        "shutdown.timeout_seconds": config.shutdown.timeout_seconds,
        "tracing.max_queue_size": config.tracing.max_queue_size,
        "tracing.export_timeout_seconds": config.tracing.export_timeout_seconds,
    }
    out += [f"{key}: must be positive" for key, value in positive.items() if value <= 0]
    if config.tokens.default_ttl_seconds > config.tokens.max_ttl_seconds:
        out.append("tokens.default_ttl_seconds: must not exceed tokens.max_ttl_seconds")
    if not config.webhooks.retry_schedule_seconds or any(
        wait <= 0 for wait in config.webhooks.retry_schedule_seconds
    ):
        out.append("webhooks.retry_schedule_seconds: a list of positive waits")
    if config.shutdown.drain_seconds < 0:
        out.append("shutdown.drain_seconds: must not be negative")
    leaks = config.leak_reports
    if leaks.enabled and (not leaks.path.startswith("/") or leaks.path.startswith("/admin")):
        out.append("leak_reports.path: must be a path on the proxy listener, e.g. /leaks/github")
    if leaks.enabled and not leaks.github_public_keys_url.startswith(("https://", "http://")):
        out.append("leak_reports.github_public_keys_url: must be an http(s) URL")
    if not 0 <= config.tracing.sample_ratio <= 1:
        out.append("tracing.sample_ratio: must be between 0 and 1")
    if not config.tracing.otlp_endpoint.startswith(("http://", "https://")):
        out.append(
            "tracing.otlp_endpoint: must be an http(s) URL, e.g. http://collector:4318/v1/traces"
        )
    if config.credits.sync_interval_seconds * 3 > config.credits.lease_seconds:
        out.append("credits.lease_seconds: must be at least 3 x credits.sync_interval_seconds")
    if not config.keys.prefix.isalnum() or not config.keys.prefix.isascii():
        out.append("keys.prefix: must be ASCII letters and digits")
    for name, upstream in config.upstreams.items():
        if not upstream.url.startswith(("http://", "https://")):
            out.append(f"upstreams.{name}.url: must start with http:// or https://")
    return out


def _check_scopes(scopes: dict[str, ScopeDef]) -> list[str]:
    return [
        f"scopes.{name}.implies: unknown scope {implied!r}"
        for name, definition in scopes.items()
        for implied in definition.implies
        if implied not in scopes
    ]


# Asymmetric only: `none` and HMAC (whose "key" would be the public JWKS) never.
SESSION_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_RESERVED_PATHS = ("/auth/", "/.well-known/")


def _check_self_service(settings: SelfService, scopes: dict[str, ScopeDef]) -> list[str]:
    if not settings.enabled:
        return []
    out: list[str] = []
    session, days = settings.session, settings.expiry_days
    path = settings.path
    if not path.startswith("/") or path.endswith("/") or "//" in path or "." in path:
        out.append("self_service.path: must start with / and not end with /, no dots")
    elif path.startswith(_RESERVED_PATHS):
        out.append("self_service.path: /auth/ and /.well-known/ belong to the gateway")
    if (session.jwks_url is None) == (session.jwks_file is None):
        out.append("self_service.session: set exactly one of jwks_url and jwks_file")
    if session.jwks_url is not None and not session.jwks_url.startswith(("http://", "https://")):
        out.append("self_service.session.jwks_url: must start with http:// or https://")
    for key in ("issuer", "audience"):
        if not getattr(session, key):
            out.append(f"self_service.session.{key}: required when self_service is enabled")
    if not session.algorithms:
        out.append("self_service.session.algorithms: at least one algorithm")
    for index, alg in enumerate(session.algorithms):
        if alg not in SESSION_ALGORITHMS:
            out.append(
                f"self_service.session.algorithms[{index}]: {alg!r} is refused"
                " (asymmetric algorithms only: none and HMAC never)"
            )
    if not 0 < days.default <= days.max:
        out.append("self_service.expiry_days.default: must be between 1 and max")
    if any(not 0 < preset <= days.max for preset in days.presets):
        out.append("self_service.expiry_days.presets: each must be between 1 and max")
    if settings.max_keys_per_user <= 0:
        out.append("self_service.max_keys_per_user: must be positive")
    for index, scope in enumerate(settings.allowed_scopes or []):
        if scope not in scopes:
            out.append(f"self_service.allowed_scopes[{index}]: unknown scope {scope!r}")
    return out


def _check_signing_keys(keys: list[SigningKey]) -> list[str]:
    return [
        f"tokens.signing_keys[{index}]: give private_key_file (a PEM file)"
        for index, key in enumerate(keys)
        if (key.private_key_file is None) == (key.file is None)
    ]


def _check_networks(key: str, cidrs: list[str]) -> list[str]:
    out = []
    for index, cidr in enumerate(cidrs):
        try:
            ipaddress.ip_network(cidr)
        except ValueError as exc:
            out.append(f"{key}[{index}]: {exc}")
    return out


def _check_new_network_notice(notice: NewNetworkNotice) -> list[str]:
    where = "key_policy.new_network_notice"
    out = []
    if not 8 <= notice.ipv4_prefix <= 32:
        out.append(f"{where}.ipv4_prefix: must be from 8 to 32")
    if not 16 <= notice.ipv6_prefix <= 128:
        out.append(f"{where}.ipv6_prefix: must be from 16 to 128")
    if not 1 <= notice.remember_days <= 365:
        out.append(f"{where}.remember_days: must be from 1 to 365")
    return out


def _check_rate_limiting(settings: RateLimiting) -> list[str]:
    out = []
    if settings.backend not in ("local", "redis"):
        out.append("rate_limiting.backend: must be local or redis")
    if settings.on_backend_error not in ("local", "open", "closed"):
        out.append("rate_limiting.on_backend_error: must be local, open or closed")
    if settings.backend == "redis":
        if not settings.redis_url:
            out.append("rate_limiting.redis_url: a redis:// URL is required with backend redis")
        else:
            try:
                redis_urls.parse(settings.redis_url)
            except ValueError as exc:
                out.append(f"rate_limiting.redis_url: {exc}")
    if not 5 <= settings.sync_interval_ms <= 10_000:
        out.append("rate_limiting.sync_interval_ms: must be between 5 and 10000")
    return out
