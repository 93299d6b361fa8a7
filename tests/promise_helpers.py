"""Shared helpers of the tests that hold the README's Reliability promises (issue 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from runner import cli

FAST = '[mock]\nlatency = "zero"\n'


def write_jobs(tmp: Path, n: int, *, name: str = "jobs.jsonl", pad: int = 0) -> Path:
    path = tmp / name
    with path.open("wb") as fh:
        for i in range(n):
            job = {"id": f"q{i}", "query": f"q {i} " + "x" * pad, "params": {"max_tokens": 4}}
            fh.write(orjson.dumps(job) + b"\n")
    return path


def fast_config(tmp: Path, extra: str = "") -> Path:
    """A config for the built-in mock answering at once (no provider named)."""
    path = tmp / "fast.toml"
    path.write_text('progress = "off"\n' + extra + FAST)
    return path


def cli_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``runner ARGS`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines()]


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())
