"""Helpers shared by the test modules: the simulated provider in a child process, the
``runner`` command in a subprocess, and a RunConfig aimed at a mock.

``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml), so any test module,
including those in sub-folders, can ``from helpers import ...``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runner.config import RunConfig

PY = sys.executable


@contextmanager
def mock_process(*flags: str) -> Iterator[str]:
    """``python -m runner.mock`` on 127.0.0.1 and a free port; yields its URL, stops it by pid."""
    proc = subprocess.Popen(
        [PY, "-m", "runner.mock", "--host", "127.0.0.1", "--port", "0", *flags],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


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
