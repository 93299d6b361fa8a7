"""Helpers shared by the test modules: the simulated provider in a child process, the
``runner`` command in a subprocess, and a RunConfig aimed at a mock.

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml), so any test module,
including those in sub-folders, can ``from helpers import ...``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from runner.config import RunConfig

PY = sys.executable


class ManualClock:
    """A clock the test moves by hand (``clock.t += 5``): stands in for ``time.monotonic`` or
    ``time.time`` where the code takes a clock."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@asynccontextmanager
async def serve_app(app: web.Application, path: str = "/v1") -> AsyncIterator[str]:
    """``app`` (a stand-in server a test writes) served by aiohttp's TestServer on 127.0.0.1
    and a free port, in this event loop; yields its URL for ``path`` and stops it."""
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url(path))
    finally:
        await server.close()


@contextmanager
def mock_process(*flags: str) -> Iterator[str]:
    """The simulated provider that ``python -m runner.mock FLAGS`` serves, on 127.0.0.1 and a
    free port; yields its URL and stops it.

    It runs on its own event loop in a thread of the test process, not in a child: a child
    cost ~0.3 s of CPU to start, 60-odd times per suite run, and no caller signals or kills the
    mock (they kill the runner). The flags are parsed by the mock CLI's own parser, so they
    mean what they mean on the command line.
    """
    import argparse
    import asyncio
    import threading

    from runner.mock.cli import add_arguments, config_from_namespace
    from runner.mock.server import MockServer

    parser = argparse.ArgumentParser(prog="python -m runner.mock")
    add_arguments(parser)
    config = config_from_namespace(parser.parse_args(["--port", "0", *flags]))
    loop = asyncio.new_event_loop()

    def serve() -> None:
        # Untraced, like the child it replaces: under `make test` coverage's tracer would
        # otherwise slow every request the mock serves (the mock's own tests measure it).
        sys.settrace(None)
        loop.run_forever()

    thread = threading.Thread(target=serve, name="mock", daemon=True)
    thread.start()

    async def start() -> tuple[MockServer, str]:
        server = MockServer(config)
        return server, await server.start("127.0.0.1", 0)

    try:
        server, url = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        try:
            yield url
        finally:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def run_until_requests(url: str, args: list[str], n: int, **popen: Any) -> subprocess.Popen[Any]:
    """Start ``python -m runner run ARGS`` and return it once the mock at ``url`` (its base URL)
    has received ``n`` requests (30 s at most, and the run must still be going)."""
    import json
    import time
    import urllib.request

    stats = url.removesuffix("/v1") + "/stats"
    proc = subprocess.Popen([PY, "-m", "runner", "run", *args], **popen)
    deadline = time.monotonic() + 30
    while json.load(urllib.request.urlopen(stats, timeout=5))["requests"] < n:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    return proc


def runner(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``python -m runner ARGS`` to completion, its output captured as text."""
    return subprocess.run(
        [PY, "-m", "runner", *args], capture_output=True, text=True, timeout=120, **kw
    )


def mock_config(tmp: Path, url: str, **kw: Any) -> RunConfig:
    """An OpenAI-shaped run against the mock at ``url``, its files under ``tmp``; ``kw`` adds or
    overrides fields."""
    fields: dict[str, Any] = {
        "provider": "openai",
        "base_url": url,
        "model": "mock-1",
        "progress": "off",
        "output": tmp / "r.jsonl",
        "latency": tmp / "l.jsonl",
        "summary": tmp / "s.json",
        **kw,
    }
    return RunConfig(**fields)
