"""The hardening battery: every test counts what reached a real upstream and reports a figure."""

from __future__ import annotations

from tests.e2e.conftest import gateway

__all__ = ["gateway"]
