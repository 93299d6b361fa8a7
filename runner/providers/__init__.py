"""Provider backends: one module per wire protocol, behind one ``HTTPBackend`` base.

``open_backend`` owns the run's single ``aiohttp.ClientSession`` and picks the protocol:
``openai`` and ``mock`` (the built-in simulated provider speaks OpenAI) get
:class:`OpenAIBackend`, ``anthropic`` gets :class:`AnthropicBackend`, ``gemini`` gets
:class:`GeminiBackend` (the built-in mock speaks it too, under ``/v1beta``).
A backend never raises for a failed request: the returned ``Attempt`` carries a classified
``ErrorInfo``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..config import RunConfig
from . import anthropic, gemini, openai
from ._http import HTTPBackend, make_session
from .anthropic import AnthropicBackend
from .gemini import GeminiBackend
from .openai import OpenAIBackend

__all__ = ["AnthropicBackend", "GeminiBackend", "HTTPBackend", "OpenAIBackend", "open_backend"]


@asynccontextmanager
async def open_backend(
    config: RunConfig, *, base_url: str, api_key: str | None
) -> AsyncIterator[HTTPBackend]:
    """The backend for ``config.provider``, with its session open for the ``async with`` body.

    :param base_url: the API root, e.g. ``https://api.openai.com/v1`` (no trailing path).
    :param api_key: sent as a bearer token (OpenAI) or ``x-api-key`` (Anthropic); never logged.
    """
    backend: HTTPBackend
    if config.provider == "anthropic":
        session = make_session(config, headers=anthropic.build_headers(config, api_key))
        backend = AnthropicBackend(session, config, base_url=base_url, api_key=api_key)
    elif config.provider == "gemini":
        session = make_session(config, headers=gemini.build_headers(config, api_key))
        backend = GeminiBackend(session, config, base_url=base_url, api_key=api_key)
    else:
        session = make_session(config, headers=openai.build_headers(config, api_key))
        backend = OpenAIBackend(session, config, base_url=base_url, api_key=api_key)
    try:
        yield backend
    finally:
        await session.close()
