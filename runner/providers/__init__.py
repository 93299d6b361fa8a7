"""Provider backends: one module per wire protocol, behind one ``HTTPBackend`` base.

``open_backend`` owns the run's single ``aiohttp.ClientSession`` and picks the protocol:
``openai`` and ``mock`` (the built-in simulated provider speaks OpenAI) get
:class:`OpenAIBackend`, ``anthropic`` gets :class:`AnthropicBackend`, ``gemini`` gets
:class:`GeminiBackend` (the built-in mock speaks it too, under ``/v1beta``).
A backend never raises for a failed request: the returned ``Attempt`` carries a classified
``ErrorInfo``. Each backend exposes ``capabilities`` (:mod:`runner.providers.capabilities`),
which is all the core knows about it.

The wire modules (and aiohttp) are imported on first use, so that reading
:mod:`runner.providers.capabilities` costs no start-up time.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import RunConfig
    from ._http import HTTPBackend
    from .anthropic import AnthropicBackend
    from .gemini import GeminiBackend
    from .openai import OpenAIBackend

__all__ = ["AnthropicBackend", "GeminiBackend", "HTTPBackend", "OpenAIBackend", "open_backend"]

_LAZY = {
    "HTTPBackend": "._http",
    "AnthropicBackend": ".anthropic",
    "GeminiBackend": ".gemini",
    "OpenAIBackend": ".openai",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


@asynccontextmanager
async def open_backend(
    config: RunConfig, *, base_url: str, api_key: str | None
) -> AsyncIterator[HTTPBackend]:
    """The backend for ``config.provider``, with its session open for the ``async with`` body.

    :param base_url: the API root, e.g. ``https://api.openai.com/v1`` (no trailing path).
    :param api_key: sent as a bearer token (OpenAI) or ``x-api-key`` (Anthropic); never logged.
    """
    from ._http import make_session

    backend: HTTPBackend
    if config.provider == "anthropic":
        from . import anthropic

        session = make_session(config, headers=anthropic.build_headers(config, api_key))
        backend = anthropic.AnthropicBackend(session, config, base_url=base_url, api_key=api_key)
    elif config.provider == "gemini":
        from . import gemini

        session = make_session(config, headers=gemini.build_headers(config, api_key))
        backend = gemini.GeminiBackend(session, config, base_url=base_url, api_key=api_key)
    else:
        from . import openai

        session = make_session(config, headers=openai.build_headers(config, api_key))
        backend = openai.OpenAIBackend(session, config, base_url=base_url, api_key=api_key)
    try:
        yield backend
    finally:
        await session.close()
