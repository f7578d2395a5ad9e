"""SSL contexts built from the configuration, with errors that name the file and the
key path (`listen.tls.cert_file: …`), checked at start (exit 2).

A listener's context is reloaded in place (`ServerTLS.reload`, on SIGHUP or when its
files change): new handshakes get the new certificate, open connections keep theirs,
and files that do not load leave the old certificate serving."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from gateway.foundation.config import ConfigError, ListenerTLS, UpstreamTLS

Resolver = Callable[[str], Path]  # `Config.resolve`: a path from the file, made absolute
log = logging.getLogger("gateway.tls")
# TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3's are all of that kind).
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1"


class ServerTLS:
    def __init__(self, where: str, settings: ListenerTLS, resolve: Resolver) -> None:
        self.where = where  # "listen.tls", "admin.tls", "decisions.listen.tls"
        self._settings = settings
        self._resolve = resolve
        self.context = _server_context()
        self._load_into(self.context)  # raises ConfigError at start

    @property
    def files(self) -> list[Path]:
        settings = self._settings
        named = [settings.cert_file, settings.key_file, settings.client_ca_file]
        return [self._resolve(name) for name in named if name]

    def reload(self) -> bool:
        """Take the files again; False (and the old certificate kept) when they do not load."""
        try:
            self._load_into(_server_context())  # checked on a scratch context first
            self._load_into(self.context)
        except ConfigError as exc:
            log.error("TLS: keeping the certificate in use: %s", exc)
            return False
        log.info("TLS: %s reloaded", self.where)
        return True

    def _load_into(self, context: ssl.SSLContext) -> None:
        settings = self._settings
        _load_pair(context, self.where, self._resolve(settings.cert_file),
                   self._resolve(settings.key_file))  # fmt: skip
        if settings.client_ca_file is not None:
            _load_ca(
                context, f"{self.where}.client_ca_file", self._resolve(settings.client_ca_file)
            )
            context.verify_mode = ssl.CERT_REQUIRED


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def upstream_context(where: str, settings: UpstreamTLS | None, resolve: Resolver) -> ssl.SSLContext:
    """For an https upstream: the system's trust store or `ca_file`, a client
    certificate when given; verification off only when asked, with a warning."""
    settings = settings or UpstreamTLS()
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if settings.ca_file is not None:
        _load_ca(context, f"{where}.ca_file", resolve(settings.ca_file))
    if (settings.cert_file is None) != (settings.key_file is None):
        raise ConfigError(f"{where}: cert_file and key_file go together")
    if settings.cert_file is not None and settings.key_file is not None:
        _load_pair(context, where, resolve(settings.cert_file), resolve(settings.key_file))
    if settings.insecure_skip_verify:
        log.warning(
            "TLS: %s.insecure_skip_verify: the upstream's certificate is NOT checked", where
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _load_pair(context: ssl.SSLContext, where: str, cert: Path, key: Path) -> None:
    """A certificate and its key, or a ConfigError naming `where`'s fields."""
    _readable(f"{where}.cert_file", cert)
    _readable(f"{where}.key_file", key)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{where}.cert_file / key_file: {cert} and {key} do not make a"
            f" certificate and its key ({exc.reason or exc})"
        ) from None


def _readable(field: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror}") from None


def _load_ca(context: ssl.SSLContext, field: str, path: Path) -> None:
    _readable(field, path)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError:
        raise ConfigError(f"{field}: {path} holds no PEM certificate") from None
