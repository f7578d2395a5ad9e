"""Sizes for the battery: small in `make test`, the issue's full figures in `make soak`."""

from __future__ import annotations

import os

SOAK = os.environ.get("GATEWAY_SOAK") == "1"


def pick(test: int, soak: int) -> int:
    return soak if SOAK else test
