"""A loopback stand-in for a provider: records every request, answers with a test's handler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Fake:
    """Set ``handler``; read ``seen``; ``release`` lets deliberately stalled handlers finish."""

    url: str = ""
    handler: Handler | None = None
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(Seen(request.method, request.path, request.headers, raw))
        assert self.handler is not None
        return await self.handler(request)


async def serve_fake() -> AsyncIterator[Fake]:
    f = Fake()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", f.dispatch)
    server = TestServer(app)
    await server.start_server()
    f.url = str(server.make_url("/v1"))
    yield f
    f.release.set()
    await server.close()
