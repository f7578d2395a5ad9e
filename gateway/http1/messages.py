"""What the gateway answers by itself, and why a request body did not arrive whole."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from multidict import CIMultiDictProxy, MultiDictProxy


@dataclass(slots=True)
class Reply:
    """A whole response with a known body: written by the listener in one write
    (for HEAD, without its body)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    header_lines: bytes = b""  # header lines already encoded, each ending in CRLF

    @classmethod
    def of(
        cls,
        status: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        merged = dict(headers or {})
        if content_type is not None:
            merged["Content-Type"] = content_type
        return cls(status, merged, body)


class BodyError(Exception):
    """A request body that will not arrive whole; says what to answer."""

    # Set per instance: mypyc-compiled classes do not take class attributes overridden
    # in a subclass.
    def __init__(
        self,
        status: int = 400,
        slug: str = "incomplete-body",
        detail: str = "the request body ended early",
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail


class IncompleteBody(BodyError):
    """The client closed the connection before its request body ended."""


class BodyTimeout(BodyError):
    """The client paused longer than `limits.body_timeout_seconds` within its body."""

    def __init__(self) -> None:
        super().__init__(408, "body-timeout", "the request body did not arrive in time")


class BodyTooSlow(BodyError):
    """A streamed body fell below `limits.min_body_bytes_per_second` on average."""

    def __init__(self) -> None:
        super().__init__(408, "body-timeout", "the request body arrived too slowly")


class BrokenBody(BodyError):
    """The body's framing broke (a bad chunk) or crossed the size limit."""


class OwnedRequest(Protocol):
    """A request the gateway answers itself on its own server (`edge.inbound.Exchange`):
    its head as parsed, and its body read whole on demand."""

    @property
    def method(self) -> str: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def query(self) -> MultiDictProxy[str]: ...
    @property
    def cookies(self) -> dict[str, str]: ...
    @property
    def host(self) -> str: ...
    @property
    def content_type(self) -> str: ...
    @property
    def body_exists(self) -> bool: ...
    @property
    def client(self) -> str: ...  # the client address (trusted_proxies applied)
    async def read_body(self, limit: int) -> bytes:
        """The whole body, at most `limit` bytes (a 413 problem beyond)."""
        ...
