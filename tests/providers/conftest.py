"""Fixtures shared by the provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from providers.fake_provider import Fake, serve_fake


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    async for f in serve_fake():
        yield f
