from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import RecordingUpstream, RunningGateway, make_config, running_gateway


@pytest.fixture
async def gateway(
    tmp_path: Path, database_url: str, upstream: RecordingUpstream
) -> AsyncIterator[RunningGateway]:
    async with running_gateway(make_config(tmp_path, database_url, upstream.url)) as running:
        yield running
