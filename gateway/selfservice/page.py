"""The API keys page: one HTML file, one JS module, one CSS file; no build step.

Served with a strict Content-Security-Policy (no inline script or style), so a
key shown on the page cannot be read by injected script.
"""

from __future__ import annotations

import html
import importlib.resources

from gateway.foundation.config import SelfService as Settings
from gateway.http1.messages import Reply

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}


def _static(name: str) -> bytes:
    return (importlib.resources.files("gateway.selfservice") / "static" / name).read_bytes()


class Page:
    def __init__(self, settings: Settings) -> None:
        values = {
            "{{base}}": html.escape(settings.path, quote=True),
            "{{login_url}}": html.escape(settings.session.login_url or "", quote=True),
        }
        text = _static("index.html").decode("utf-8")
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        self._html = text.encode("utf-8")
        self._assets = {name: _static(name) for name in _ASSETS}

    def html(self) -> Reply:
        return Reply.of(
            200,
            self._html,
            "text/html; charset=utf-8",
            {**PAGE_HEADERS, "Cache-Control": "no-store"},
        )

    def asset(self, name: str) -> Reply | None:
        body = self._assets.get(name)
        if body is None:
            return None
        content_type = _ASSETS[name] + "; charset=utf-8"
        return Reply.of(200, body, content_type, {**PAGE_HEADERS, "Cache-Control": "no-cache"})
