"""Process-edge helpers every command shares: the event loop and the endpoint to talk to.

``runner run``, the batch-API path and ``runner bench`` all run one coroutine on uvloop and talk
either to a configured base URL or to the built-in mock started in this process; they do it
through these two functions, so the mock's start-up and its config errors read the same
everywhere. The mock is imported only when one is started.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import RunConfig
    from .mock import MockConfig

__all__ = ["endpoint", "event_loop_run", "mock_config"]

T = TypeVar("T")


def event_loop_run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on uvloop (asyncio's loop where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)


def mock_config(config: RunConfig, defaults: Mapping[str, Any] | None = None) -> MockConfig:
    """The built-in mock's config: ``defaults`` overlaid by the run's ``[mock]`` table.

    :raises ConfigError: an unknown or invalid ``[mock]`` option (checked before anything runs).
    """
    from dataclasses import fields

    from .config import did_you_mean
    from .mock import MockConfig

    # named here: MockConfig(**) said "MockConfig.__init__() got an unexpected keyword
    # argument", and a string for a number "'<' not supported between 'str' and 'int'"
    known = {f.name: f.default for f in fields(MockConfig)}
    for k, v in config.mock.items():
        if k not in known:
            raise ConfigError(f"unknown key mock.{k}{did_you_mean(k, known)}")
        number = isinstance(known[k], int | float) and not isinstance(known[k], bool)
        if number and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ConfigError(f"mock.{k} must be a number, got {v!r}")
    try:
        return MockConfig(**{**(defaults or {}), **dict(config.mock)})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[mock] options: {exc}") from exc


@contextlib.asynccontextmanager
async def endpoint(config: RunConfig, mock: MockConfig | None = None) -> AsyncIterator[str]:
    """The base URL to talk to: the configured one, or a built-in mock on a free loopback port.

    :param mock: the mock's config when one is started (default: :func:`mock_config`).
    """
    if config.base_url:
        yield config.base_url.rstrip("/")
        return
    from .mock import serve

    async with serve(mock if mock is not None else mock_config(config)) as url:
        yield url
